"""What the streamed data modules (the synthetic stream, WebDataset shards) share: counters of the samples
they left out, and switching off what only fixed lines can have.

Counters of samples a streaming dataset left out (too wide, unreadable, ...) are shared with loader workers.

A streaming dataset decides in its loader workers what to skip, so the counts live in a small shared-memory
tensor: one row per worker (plus one for the main process), one column per reason. Each process only adds to
its own row, so no lock is needed; `totals()` sums the rows in the main process, where a callback logs them
(`imuru_pl.callbacks.data_counters.DataSkipCounts`: TensorBoard `data/skipped_<reason>`).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import get_worker_info

log = logging.getLogger(__name__)

WARN_FIRST = 5  # warnings per reason and process; later skips are only counted


class SkipCounts:
    def __init__(self, reasons: tuple[str, ...], workers: int = 0):
        self.reasons = tuple(reasons)
        self.table = torch.zeros(max(0, int(workers)) + 1, len(self.reasons), dtype=torch.int64).share_memory_()
        self._warned: dict[str, int] = {}

    def _row(self) -> int:
        info = get_worker_info()
        return 0 if info is None else min(1 + info.id, self.table.shape[0] - 1)

    def add(self, reason: str, what: str = "", count: int = 1) -> None:
        """Count one skip; the first few of each reason (per process) are also a warning naming `what`."""
        self.table[self._row(), self.reasons.index(reason)] += int(count)
        seen = self._warned.get(reason, 0)
        if what and seen < WARN_FIRST:
            self._warned[reason] = seen + 1
            log.warning("Skipped %s: %s.", reason.replace("_", " "), what)

    def totals(self) -> dict[str, int]:
        sums = self.table.sum(dim=0).tolist()
        return {reason: int(value) for reason, value in zip(self.reasons, sums)}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_warned"] = {}
        return state


def fixed_lines_only(datamodule, what: str) -> None:
    """Switch off what only a fixed set of lines can have (the latent cache, a curriculum, width buckets),
    with one note: an experiment made for fixed lines (the demo) then streams as well."""
    curriculum = dict(getattr(datamodule, "curriculum", None) or {})
    on = [name for name, value in (("data.latent_cache", datamodule.latent_cache),
                                   ("data.curriculum", int(curriculum.get("steps", 0)) > 0),
                                   ("data.bucket_batches", int(datamodule.bucket_batches) > 1)) if value]
    if on:
        log.info("No line of %s repeats: %s off (they sort or cache a fixed set of lines).", what,
                 ", ".join(on))
    datamodule.latent_cache, datamodule.bucket_batches = False, 0
    datamodule.curriculum = {"steps": 0, "start": float(curriculum.get("start", 1.0))}


def worker_start(world_size: int, workers: int) -> str | None:
    """How the training loader starts its workers: by fork, except under DDP, where a worker forked from a
    rank whose process-group threads hold a lock can hang before it starts (seen with gloo on CPU); there
    they start fresh (`spawn`: the dataset is pickled, each worker imports the project once per epoch)."""
    return "spawn" if world_size > 1 and workers > 0 else None


def rank_and_world(trainer) -> tuple[int, int]:
    """(rank, world size) of this process: the trainer's, else torch.distributed's, else (0, 1)."""
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
