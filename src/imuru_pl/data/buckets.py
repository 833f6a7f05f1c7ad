"""Batches of lines of similar width: less padding per training step (`data.bucket_batches`).

A batch is padded to its widest style image and its widest target, so a batch that mixes a 100 px line
with a 500 px one spends much of the T5's work on padding. With `bucket_batches = k`, k batches' worth of
lines are drawn at random, sorted by size (style width, then target width: `group_by_size`) and cut into
k batches, which are yielded in random order. Every line is still a target once per epoch and the groups
are random, but the lines inside a batch have similar widths. 0 (or 1) keeps plain shuffled batches.
The measured saving is in docs/benchmarks.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from imuru_pl.errors import UserError


def check_bucket_batches(value) -> int:
    """`data.bucket_batches` as an int: 0 or 1 = off, k > 1 = sort k batches' lines together."""
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise UserError(f"data.bucket_batches must be a whole number (0 = off); got {value!r}.") from None
    if k < 0 or k != float(value):
        raise UserError(f"data.bucket_batches must be a whole number (0 = off); got {value!r}.")
    return k


def group_by_size(indices: np.ndarray, sizes: np.ndarray, batch_size: int,
                  rng: np.random.Generator) -> list[list[int]]:
    """`indices` cut into batches of `batch_size` lines of similar size, in random order.

    A batch is padded to its widest style and, separately, to its widest target, and the two widths are
    independent (a line's style is another line). So the lines are sorted by style width into about
    sqrt(batches) bins of whole batches, and each bin by target width before it is cut: both widths vary
    little inside a batch. `sizes`: (N, 2) style and target widths of all items."""
    batches_total = math.ceil(len(indices) / batch_size)
    per_bin = math.ceil(batches_total / max(1, round(math.sqrt(batches_total)))) * batch_size
    by_style = indices[np.argsort(sizes[indices, 0], kind="stable")]
    batches = []
    for start in range(0, len(by_style), per_bin):
        part = by_style[start : start + per_bin]
        part = part[np.argsort(sizes[part, 1], kind="stable")]
        batches += [part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class BucketBatchSampler(Sampler[list[int]]):
    """A new permutation every epoch, cut into groups of `bucket_batches` batches, each group sorted by
    size before it is cut into batches."""

    def __init__(self, sizes: np.ndarray, batch_size: int, bucket_batches: int, seed: int = 0):
        """`sizes`: (N, 2) style and target widths of the items (a line dataset's `pixel_widths`)."""
        if len(sizes) == 0:
            raise UserError("There are no training lines to draw batches from.")
        self.sizes = np.asarray(sizes)
        self.batch_size, self.bucket_batches = int(batch_size), max(1, int(bucket_batches))
        self.seed, self.epoch = int(seed), 0

    def __len__(self) -> int:
        return math.ceil(len(self.sizes) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch, 1))
        self.epoch += 1
        order = rng.permutation(len(self.sizes))
        group = self.batch_size * self.bucket_batches
        for start in range(0, len(order), group):
            yield from group_by_size(order[start : start + group], self.sizes, self.batch_size, rng)
