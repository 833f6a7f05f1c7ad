"""The learning curve of legibility: OCR CER of generated lines against training steps and minutes.

Every `every_n_steps` optimiser steps (and once when training ends) the model writes a fixed set of lines
for held-out writers (the validation split: writers never trained on) and for seen writers (training lines),
an OCR engine (`metrics.ocr`) reads them, and the callback logs

    curve/cer_heldout, curve/cer_seen     CER of generated lines (case-sensitive, corpus level)
    curve/cer_real_heldout                CER of the real lines of the same held-out texts (the floor)
    curve/stop_rate                       share of held-out lines that stopped by themselves
    curve/width_error                     mean |generated width - real width| / real width (held-out)
    curve/width_within_15                 share of held-out lines whose width is within 15 % of the real one
    curve/minutes                         training minutes so far (the callback's own time left out)

to TensorBoard (by step) and to `<output_dir>/learning_curve.csv` (step and minutes), so runs of different
speed can be compared by time as well as by steps. With `metrics.ocr.enabled=false` the CER columns stay
empty and only stop rate and width are measured.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from imuru_pl.data.batch import collate_lines, spread_samples
from imuru_pl.data.image import tensor_to_image
from imuru_pl.metrics.cer import cer
from imuru_pl.metrics.evaluator import get_ocr
from imuru_pl.metrics.geometry import line_geometry
from imuru_pl.metrics.settings import settings_from_config
from imuru_pl.pipeline import write_lines_detailed

log = logging.getLogger(__name__)

CURVE_FILE = "learning_curve.csv"
FIELDS = ("step", "minutes", "cer_heldout", "cer_seen", "cer_real_heldout", "stop_rate", "width_error",
          "width_within_15")


class LegibilityCurve(L.Callback):
    def __init__(self, every_n_steps: int = 250, num_lines: int = 16, seen_lines: int = 16,
                 enabled: bool = True, metrics: Any = None, directory: str | None = None,
                 max_new_columns: int | None = None, eval_batch_size: int = 16):
        self.every_n_steps = int(every_n_steps)
        self.num_lines, self.seen_lines = int(num_lines), int(seen_lines)
        self.enabled = bool(enabled)
        self.settings = settings_from_config(metrics)
        self.directory = Path(directory) if directory else None
        self.max_new_columns = max_new_columns
        self.eval_batch_size = max(1, int(eval_batch_size))
        self.heldout: list = []
        self.seen: list = []
        self.real_cer: float | None = None
        self.rows: list[dict[str, float]] = []
        self._fit_started = 0.0
        self._own_seconds = 0.0
        self._last_step = -1

    # -- Lightning hooks ------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer, pl_module):
            return
        started = time.time()
        datamodule = trainer.datamodule
        self.heldout = spread_samples(getattr(datamodule, "val_dataset", None), self.num_lines)
        self.seen = spread_samples(getattr(datamodule, "train_dataset", None), self.seen_lines)
        if self.heldout and self.settings.ocr_enabled:
            reads = get_ocr(self.settings).read([tensor_to_image(s["target"]) for s in self.heldout])
            self.real_cer = cer(reads, [s["text"] for s in self.heldout])
        self._fit_started = time.time()
        self._own_seconds = time.time() - started

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.measure(trainer, pl_module)

    # -- the measurement -------------------------------------------------------------------------------
    def _active(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        return (self.enabled and trainer.is_global_zero and not trainer.sanity_checking
                and not trainer.fast_dev_run  # a fast dev run checks the loop, not legibility
                and hasattr(pl_module, "eval_model") and hasattr(pl_module, "vae"))

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float] | None:
        if not self._active(trainer, pl_module) or not (self.heldout or self.seen):
            return None
        started = time.time()
        minutes = (started - self._fit_started - self._own_seconds) / 60
        was_training = pl_module.training
        pl_module.eval()
        try:
            row: dict[str, float] = {"step": trainer.global_step, "minutes": round(minutes, 3)}
            if self.heldout:
                row.update(self._score(pl_module, self.heldout, "heldout", with_geometry=True))
                row["cer_real_heldout"] = self.real_cer
            if self.seen:
                row.update(self._score(pl_module, self.seen, "seen", with_geometry=False))
        finally:
            pl_module.train(was_training)
        self.rows.append(row)
        self._last_step = trainer.global_step
        self._write(trainer, row)
        self._own_seconds += time.time() - started
        log.info("Legibility at step %d (%.1f training min): %s", row["step"], minutes,
                 ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                           if k not in ("step", "minutes") and v is not None))
        return row

    def _score(self, pl_module, samples: list, name: str, with_geometry: bool) -> dict[str, float]:
        images, texts, lengths, stopped, widths = [], [], [], [], []
        vae = pl_module._vae_on_device()
        for start in range(0, len(samples), self.eval_batch_size):
            batch = collate_lines(samples[start : start + self.eval_batch_size])
            written = write_lines_detailed(pl_module.eval_model, vae, batch.style, batch.style_widths,
                                           batch.texts, self.max_new_columns)
            images += [tensor_to_image(image) for image in written.images]
            texts += batch.texts
            lengths.append(written.lengths)
            stopped.append(written.stopped)
            widths.append(batch.target_widths.cpu())
        scores: dict[str, float] = {}
        if self.settings.ocr_enabled:  # with metrics.ocr.enabled=false only the geometry is measured
            scores[f"cer_{name}"] = cer(get_ocr(self.settings).read(images), texts)
        if with_geometry:
            scores.update(line_geometry(torch.cat(lengths), torch.cat(stopped), torch.cat(widths)))
        return scores

    def _write(self, trainer: L.Trainer, row: dict[str, float]) -> None:
        metrics = {f"curve/{k}": float(v) for k, v in row.items() if k != "step" and v is not None}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_metrics(metrics, step=trainer.global_step)
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / CURVE_FILE
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k) for k in FIELDS})
