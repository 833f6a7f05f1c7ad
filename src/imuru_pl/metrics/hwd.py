"""HWD (Handwriting Distance): per-writer mean VGG16 column features, Euclidean distance, writer mean."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from imuru_pl.console import progress
from imuru_pl.errors import UserError
from imuru_pl.metrics.images import hwd_input
from imuru_pl.metrics.items import Item

HWD_HEIGHT = 32  # one pool5 column per 32 px of width


@torch.inference_mode()
def column_features(
    model: nn.Module, items: Sequence[Item], device: str | torch.device = "cpu"
) -> list[torch.Tensor]:
    """One (floor(W/32), 512) tensor per line, W the width at height 32.

    Lines go through the network one at a time: batching would need padding, and padded columns would leak
    into the receptive field of the real ones.
    """
    out = []
    for item in progress(items, desc="HWD features", unit="line"):
        x = hwd_input(item.image, HWD_HEIGHT).unsqueeze(0).to(device)
        fmap = model(x)  # (1, 512, 1, floor(W/32))
        out.append(fmap[0].flatten(1).T.double().cpu())
    return out


def writer_means(items: Sequence[Item], features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean of every column vector of a writer's lines (columns, not lines, are weighted equally)."""
    grouped: dict[str, list[torch.Tensor]] = {}
    for item, feats in zip(items, features, strict=True):
        grouped.setdefault(item.writer, []).append(feats)
    return {writer: torch.cat(parts).mean(0) for writer, parts in grouped.items()}


def check_same_writers(fake: set[str], real: set[str]) -> None:
    """HWD compares writer by writer; differing writer sets are a user error (never a silent NaN)."""
    if fake == real:
        return

    def show(names: set[str]) -> str:
        names = sorted(names)
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    parts = []
    if fake - real:
        parts.append(f"only in the generated set: {show(fake - real)}")
    if real - fake:
        parts.append(f"only in the real set: {show(real - fake)}")
    raise UserError(f"HWD needs the same writers in both sets; {'; '.join(parts)}.")


def hwd_from_means(
    fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor]
) -> tuple[float, dict[str, float]]:
    """Average over writers of the distance between the two per-writer means; also the per-writer values."""
    check_same_writers(set(fake), set(real))
    per_writer = {w: float(torch.linalg.vector_norm(fake[w] - real[w])) for w in sorted(fake)}
    return sum(per_writer.values()) / len(per_writer), per_writer


def hwd(
    model: nn.Module, fake: Sequence[Item], real: Sequence[Item], device: str | torch.device = "cpu"
) -> tuple[float, dict[str, float]]:
    """HWD between a generated and a real set (lower is closer in style)."""
    check_same_writers({i.writer for i in fake}, {i.writer for i in real})
    fake_means = writer_means(fake, column_features(model, fake, device))
    real_means = writer_means(real, column_features(model, real, device))
    return hwd_from_means(fake_means, real_means)
