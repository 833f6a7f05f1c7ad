"""Auxiliary losses that teach Imuru which letter it is writing (docs/legibility.md).

Autoregressive text-to-speech meets the same problem as Imuru (a decoder of continuous frames that
must find its place in a text) and these are its remedies, written for latent columns:

- `guided_attention_loss`: the decoder's cross-attention should stay near the diagonal that runs from
  the first letter at the first column to the last letter at the last written column (Tachibana et al.,
  2018). Attention mass far from it is penalised; nothing is forced where the diagonal is right.
- `stop_loss`: an end-of-line probability per column, 1 on the blank columns after the text.
- `ctc_loss`: the characters of the text read from the decoder states with CTC, so the states must
  know which letter each column belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from imuru_pl.models.tokenizer import BYTE_OFFSET, PAD_ID


def diagonal_penalty(rows: Tensor, text_lengths: Tensor, rows_total: int, columns_total: int,
                     sigma: float) -> Tensor:
    """(B, rows_total, columns_total) weights 1 - exp(-(i/L - j/N)^2 / 2 sigma^2) of Tachibana et al.

    `rows` (B,) = written decoder steps N per sample; `text_lengths` (B,) = letters L per sample. Positions
    are taken at cell centres, so the first step and the first letter sit at 0.5/N and 0.5/L.
    """
    j = (torch.arange(rows_total, device=rows.device, dtype=torch.float32)[None, :, None] + 0.5)
    i = (torch.arange(columns_total, device=rows.device, dtype=torch.float32)[None, None, :] + 0.5)
    j = j / rows.clamp_min(1)[:, None, None].float()
    i = i / text_lengths.clamp_min(1)[:, None, None].float()
    return 1.0 - torch.exp(-((i - j) ** 2) / (2.0 * sigma**2))


def guided_attention_loss(cross_attentions: Sequence[Tensor], prefix_length: int, steps: Tensor,
                          text_mask: Tensor, sigma: float) -> Tensor:
    """Mean off-diagonal cross-attention mass per written decoder step (0 = all on the diagonal).

    `cross_attentions`: one (B, H, T, S) tensor per decoder layer (T = prefix + steps); `steps` (B,) = the
    decoder steps that write the text (trailing blank steps and padding are left free); `text_mask` (B, S).
    Averaged over layers and heads: every head may attend anywhere, on average near the diagonal.
    """
    attention = torch.stack([a[:, :, prefix_length:].float() for a in cross_attentions]).mean(dim=(0, 2))
    batch, rows_total, columns_total = attention.shape
    letters = (text_mask.sum(1) - 1).clamp_min(1)  # the EOS token sits just past the last letter
    weights = diagonal_penalty(steps, letters, rows_total, columns_total, sigma)
    row_mask = torch.arange(rows_total, device=steps.device)[None, :] < steps[:, None]
    cell_mask = row_mask[:, :, None] & text_mask.bool()[:, None, :]
    penalty = (attention * weights * cell_mask).sum()
    return penalty / row_mask.sum().clamp_min(1)


def stop_loss(logits: Tensor, lengths: Tensor, loss_mask: Tensor) -> Tensor:
    """BCE of per-column end-of-line logits (B, n): target 1 from column `lengths` on, over `loss_mask`."""
    ended = torch.arange(logits.shape[1], device=logits.device)[None, :] >= lengths[:, None]
    per_column = F.binary_cross_entropy_with_logits(logits.float(), ended.float(), reduction="none")
    weights = loss_mask.float()
    return (per_column * weights).sum() / weights.sum().clamp_min(1.0)


def ctc_targets(text_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Byte ids without EOS and padding, concatenated (as F.ctc_loss takes them), and their lengths."""
    keep = text_ids >= BYTE_OFFSET
    return text_ids[keep], keep.sum(1)


def ctc_loss(logits: Tensor, lengths: Tensor, text_ids: Tensor) -> Tensor:
    """CTC of per-column character logits (B, n, V) against the texts; the pad id is the CTC blank.

    Lines narrower than CTC needs (fewer columns than letters plus repeats) are left out
    (`zero_infinity`); the loss is the mean over lines of the per-letter negative log-likelihood.
    """
    targets, target_lengths = ctc_targets(text_ids)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (n, B, V)
    return F.ctc_loss(log_probs, targets, lengths.clamp_max(logits.shape[1]), target_lengths,
                      blank=PAD_ID, reduction="mean", zero_infinity=True)

