"""Samples a streaming data module left out (too wide, unreadable, a shard that failed), in TensorBoard.

Data modules that skip samples while training (`data=synthetic_stream`, `data=webdataset`) expose
`skip_counts() -> {reason: count}`; this callback logs them as `data/skipped_<reason>` every `every_n_steps`
(summed over DDP ranks) and writes the totals into the log when training ends. Other data modules have no
such counts and the callback does nothing.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

log = logging.getLogger(__name__)


def skip_counts(trainer: L.Trainer) -> dict[str, int] | None:
    datamodule = getattr(trainer, "datamodule", None)
    counts = getattr(datamodule, "skip_counts", None)
    return counts() if callable(counts) else None


class DataSkipCounts(L.Callback):
    def __init__(self, every_n_steps: int = 100):
        self.every_n_steps = max(1, int(every_n_steps))

    def _totals(self, trainer: L.Trainer) -> dict[str, int] | None:
        counts = skip_counts(trainer)
        if counts is None:
            return None
        if trainer.world_size > 1:  # collective: every rank reaches the same step
            values = torch.tensor(list(counts.values()), dtype=torch.float64, device=trainer.strategy.root_device)
            values = trainer.strategy.reduce(values, reduce_op="sum").cpu()
            counts = {k: int(v) for k, v in zip(counts, values.tolist())}
        return counts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps != 0:
            return
        counts = self._totals(trainer)
        if counts and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"data/skipped_{k}": float(v) for k, v in counts.items()},
                                   step=trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        counts = self._totals(trainer)
        if counts is not None and trainer.is_global_zero:
            skipped = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v) or "none"
            log.info("Training samples left out (or shortened) by the data: %s.", skipped)
