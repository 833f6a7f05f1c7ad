"""A curriculum from short to long texts: early batches are drawn from the shortest lines only.

At training step s of a curriculum of S steps, batches are drawn (without replacement inside a batch) from
the `start + (1 - start) * s / S` shortest share of the training lines, by text length; from step S on,
from all of them. The step is read from the trainer, so a resumed run continues the schedule where it
stopped. Short lines are where a text-to-column alignment is easiest to find (fewer letters to place),
which is what autoregressive text-to-speech curricula exploit.

Batches are drawn per step rather than as a permutation, so a resumed run continues the schedule but not
the exact batch sequence, and the curriculum is for single-process training (a clear error otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, Sampler

from imuru_pl.data.batch import collate_lines, line_loader
from imuru_pl.data.buckets import BucketBatchSampler, group_by_size
from imuru_pl.errors import UserError


def check_curriculum(curriculum: dict | None) -> dict:
    """`{steps, start}` with defaults and checks; steps 0 switches the curriculum off."""
    settings = {"steps": 0, "start": 0.25, **dict(curriculum or {})}
    unknown = set(settings) - {"steps", "start"}
    if unknown:
        raise UserError(f"Unknown data.curriculum keys {sorted(unknown)}; known: steps, start.")
    if int(settings["steps"]) < 0:
        raise UserError(f"data.curriculum.steps must be 0 (off) or more; got {settings['steps']}.")
    if not 0.0 < float(settings["start"]) <= 1.0:
        raise UserError(f"data.curriculum.start is a share of the lines in (0, 1]; got {settings['start']}.")
    return {"steps": int(settings["steps"]), "start": float(settings["start"])}


def check_single_process(trainer, setting: str = "data.curriculum",
                         off: str = "data.curriculum.steps=0") -> None:
    """The curriculum (and bucketing) draws every batch itself: several processes would need a sharded
    schedule."""
    if trainer is not None and int(getattr(trainer, "world_size", 1)) > 1:
        raise UserError(f"{setting} works in single-process training; set {off} when training with "
                        "several processes.")


class CurriculumBatchSampler(Sampler[list[int]]):
    """Batches of indices whose pool grows from the shortest texts to all of them over `steps` steps.

    With `sizes` and `bucket_batches` k > 1, k batches are drawn from the pool at once and cut by size
    (`imuru_pl.data.buckets`): lines of similar width share a batch."""

    def __init__(self, text_lengths: Sequence[int], batch_size: int, steps: int, start: float,
                 current_step: Callable[[], int], seed: int = 0, sizes: np.ndarray | None = None,
                 bucket_batches: int = 0):
        if len(text_lengths) == 0:
            raise UserError("The curriculum has no training lines to draw from.")
        self.order = np.argsort(np.asarray(text_lengths), kind="stable")  # shortest first
        self.batch_size, self.steps, self.start = int(batch_size), int(steps), float(start)
        self.current_step = current_step
        self.seed, self.epoch = int(seed), 0
        self.sizes = None if sizes is None or bucket_batches <= 1 else np.asarray(sizes)
        self.bucket_batches = max(1, int(bucket_batches)) if self.sizes is not None else 1

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def share(self, step: int) -> float:
        """The share of lines (shortest first) that batches are drawn from at `step`."""
        if self.steps <= 0:
            return 1.0
        return min(1.0, self.start + (1.0 - self.start) * step / self.steps)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        total, left = len(self.order), len(self)
        while left > 0:
            pool = max(self.batch_size, math.ceil(self.share(self.current_step()) * total))
            pool = min(pool, total)
            if self.sizes is None:
                chosen = rng.choice(pool, size=min(self.batch_size, pool), replace=False)
                yield self.order[chosen].tolist()
                left -= 1
                continue
            batches = min(self.bucket_batches, left, max(1, pool // self.batch_size))
            chosen = rng.choice(pool, size=min(batches * self.batch_size, pool), replace=False)
            group = group_by_size(self.order[chosen], self.sizes, self.batch_size, rng)
            yield from group
            left -= len(group)


def training_loader(datamodule, dataset) -> DataLoader:
    """A line data module's training DataLoader: shuffled batches; with `datamodule.bucket_batches` > 1,
    batches of similar widths (`BucketBatchSampler`, sizes from `dataset.pixel_widths`); with
    `datamodule.curriculum` on, a `CurriculumBatchSampler` (`dataset.texts` gives the text lengths) that
    follows the trainer's step, bucketed the same way."""
    curriculum, workers = datamodule.curriculum, datamodule.num_workers
    buckets = int(getattr(datamodule, "bucket_batches", 0))
    sizes = np.asarray(dataset.pixel_widths) if buckets > 1 else None  # (N, 2) style, target px
    if curriculum["steps"] <= 0:
        if sizes is None:
            return line_loader(dataset, datamodule.batch_size, shuffle=True, num_workers=workers)
        check_single_process(datamodule.trainer, "data.bucket_batches", "data.bucket_batches=0")
        sampler = BucketBatchSampler(sizes, datamodule.batch_size, buckets, datamodule.seed)
    else:
        check_single_process(datamodule.trainer)

        def current_step() -> int:
            return int(datamodule.trainer.global_step) if datamodule.trainer is not None else 0

        sampler = CurriculumBatchSampler([len(t) for t in dataset.texts], datamodule.batch_size,
                                         curriculum["steps"], curriculum["start"], current_step,
                                         datamodule.seed, sizes, buckets)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_lines,
                      persistent_workers=workers > 0)
