"""The one batch format every dataset produces and every model consumes.

A dataset item is a dict with the keys of `LineSample`; `collate_lines` pads a list of them into a
`LineBatch`: images are right-padded with white (+1) to the batch's widest image rounded up to a
multiple of 8 (one VAE latent column = 8 px), and the true widths are kept so that models can mask
the padding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import NotRequired, TypedDict

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

LINE_HEIGHT = 64
COLUMN_PX = 8  # pixels of width per VAE latent column


class LineSample(TypedDict):
    style: Tensor  # (C, 64, w) float in [-1, 1], white paper = +1; C = 3 (style may carry paper colour)
    target: Tensor  # (1, 64, w') float in [-1, 1]: clean dark ink on white
    text: str  # text written in `target`
    writer: str  # writer id shared by style and target
    style_text: str  # text written in `style` (for logging/evaluation only: never a model input)
    style_key: str  # stable id of the style image (latent cache key)
    target_key: str  # stable id of the target image (latent cache key)
    target_starts: NotRequired[Tensor]  # (len(text),) float px where each letter starts; synthetic data only


@dataclass
class LineBatch:
    style: Tensor  # (B, C, 64, Ws), Ws a multiple of 8, white-padded
    style_widths: Tensor  # (B,) long: true width in px of each style image
    target: Tensor  # (B, 1, 64, Wt), Wt a multiple of 8, white-padded
    target_widths: Tensor  # (B,) long
    texts: list[str]
    writers: list[str]
    style_texts: list[str]
    style_keys: list[str]
    target_keys: list[str]
    target_starts: list[Tensor] | None = None  # each target's letter starts (px), when every sample has them

    def __len__(self) -> int:
        return len(self.texts)

    def to(self, device: torch.device | str) -> LineBatch:
        return replace(
            self,
            **{f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)},
        )


def round_up(width: int, multiple: int = COLUMN_PX) -> int:
    return -(-int(width) // multiple) * multiple


def pad_images(images: list[Tensor], multiple: int = COLUMN_PX) -> tuple[Tensor, Tensor]:
    """Stack (C, H, w_i) images into (B, C, H, W) padded with white; W = max w_i rounded up to `multiple`."""
    widths = torch.tensor([img.shape[-1] for img in images], dtype=torch.long)
    channels, height = images[0].shape[0], images[0].shape[1]
    out = torch.ones(len(images), channels, height, round_up(int(widths.max()), multiple), dtype=images[0].dtype)
    for i, img in enumerate(images):
        if img.shape[0] != channels or img.shape[1] != height:
            raise ValueError(f"all images in a batch need shape ({channels}, {height}, w); got {tuple(img.shape)}")
        out[i, :, :, : img.shape[-1]] = img
    return out, widths


def collate_lines(samples: list[LineSample]) -> LineBatch:
    style, style_widths = pad_images([s["style"] for s in samples])
    target, target_widths = pad_images([s["target"] for s in samples])
    return LineBatch(
        style=style,
        style_widths=style_widths,
        target=target,
        target_widths=target_widths,
        texts=[s["text"] for s in samples],
        writers=[s["writer"] for s in samples],
        style_texts=[s["style_text"] for s in samples],
        style_keys=[s["style_key"] for s in samples],
        target_keys=[s["target_key"] for s in samples],
        target_starts=[s["target_starts"] for s in samples] if all("target_starts" in s for s in samples)
        else None,
    )


def spread_samples(dataset: Dataset | None, count: int) -> list[LineSample]:
    """`count` items spread evenly over a dataset (datasets are ordered by writer, so several writers
    appear); empty for no dataset, an empty one or count <= 0."""
    if dataset is None or len(dataset) == 0 or count <= 0:
        return []
    step = max(1, len(dataset) // count)
    return [dataset[i] for i in range(0, len(dataset), step)][:count]


def line_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0) -> DataLoader:
    """The DataLoader every line dataset uses: `LineSample`s collated into `LineBatch`es.

    A shuffled (training) loader keeps its workers from epoch to epoch; an evaluation loader starts them
    for each pass. Every new loader iterator draws its workers' base seed from the global RNG, so a
    persistent evaluation loader would draw once per process, at its first validation: in a resumed run
    that falls at another step than in the uninterrupted one, and the training noise would part ways.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_lines, persistent_workers=num_workers > 0 and shuffle)
