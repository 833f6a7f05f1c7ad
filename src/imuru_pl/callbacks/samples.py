"""Every N training steps: generate lines for fixed validation writers and log style | generated | truth."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from imuru_pl.data.batch import LineBatch, collate_lines, spread_samples
from imuru_pl.visual import rows_grid, to_chw

log = logging.getLogger(__name__)


class GenerationSamples(L.Callback):
    def __init__(self, every_n_steps: int = 500, num_samples: int = 4, max_new_columns: int | None = None):
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.max_new_columns = max_new_columns
        self.batch: LineBatch | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dataset = trainer.datamodule.val_dataset if trainer.datamodule is not None else None
        samples = spread_samples(dataset, self.num_samples)
        if samples:
            self.batch = collate_lines(samples)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not hasattr(pl_module, "generate_batch"):
            return
        if self.batch is None or step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.batch is not None and trainer.is_global_zero and hasattr(pl_module, "generate_batch"):
            self.log_samples(trainer, pl_module)

    def log_samples(self, trainer: L.Trainer, pl_module) -> None:
        was_training = pl_module.training
        pl_module.eval()
        generated = pl_module.generate_batch(self.batch, self.max_new_columns)
        if was_training:
            pl_module.train()
        b = self.batch
        rows = [[b.style[i, :, :, : b.style_widths[i]], generated[i], b.target[i, :, :, : b.target_widths[i]]]
                for i in range(len(b))]
        grid = rows_grid(rows)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/samples", to_chw(grid), trainer.global_step)
