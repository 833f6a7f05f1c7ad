"""How a style image's latent columns become the decoder's prefix (Imuru's `style_enc`).

Every encoder maps normalised style latents (B, m, 8) and their mask (B, m) to prefix latents
(B, p, 8) and a prefix mask (B, p). Padded columns never leak into the result: pooling uses a masked
mean or a masked softmax, and the `full` prefix is LEFT-aligned (padding first) so that the real
columns sit right before SOS in every row; T5's relative position bias only sees offsets, so a
sample then gets the same prediction alone or inside a padded batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from imuru_pl.errors import UserError

STYLE_ENCODERS = ("mean", "mlp", "mlp2", "full")


class MeanPool(nn.Module):
    """One prefix column: the average of the real style columns."""

    def forward(self, style: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        weights = mask.to(style.dtype).unsqueeze(-1)
        pooled = (style * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp_min(1.0)
        return pooled, mask.new_ones(style.shape[0], 1)


class AttentionPool(nn.Module):
    """One prefix column: a softmax-weighted sum of the real style columns, scored per column."""

    def __init__(self, scorer: nn.Module):
        super().__init__()
        self.scorer = scorer

    def forward(self, style: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.scorer(style).squeeze(-1)  # (B, m)
        # finfo.min rather than -inf keeps a row without any real column finite instead of NaN.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1).unsqueeze(-1)
        return (weights * style).sum(1, keepdim=True), mask.new_ones(style.shape[0], 1)


class FullPrefix(nn.Module):
    """Every real style column is a prefix token, left-aligned, trimmed to the longest real style."""

    def forward(self, style: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # A stable sort of the mask puts padded columns (0) first and keeps real columns in order.
        order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
        mask = mask.gather(1, order)
        style = style.gather(1, order.unsqueeze(-1).expand_as(style)) * mask.unsqueeze(-1).to(style.dtype)
        keep = max(int(mask.sum(1).max()), 1)
        return style[:, -keep:], mask[:, -keep:]


def build_style_encoder(name: str, latent_channels: int = 8) -> nn.Module:
    """The `style_enc` module named by the config (mean | mlp | mlp2 | full)."""
    key = str(name).lower()
    if key == "mean":
        return MeanPool()
    if key == "mlp":
        return AttentionPool(nn.Linear(latent_channels, 1))
    if key == "mlp2":
        return AttentionPool(
            nn.Sequential(
                nn.Linear(latent_channels, latent_channels), nn.SiLU(), nn.Linear(latent_channels, 1)
            )
        )
    if key == "full":
        return FullPrefix()
    raise UserError(f"Unknown style_enc {name!r}; choose one of: {', '.join(STYLE_ENCODERS)}.")
