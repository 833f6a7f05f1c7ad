"""Train the line reader that the VAE stage's recognition loss reads with (`vae.train.reader_weight` > 0).

`ensure_vae_reader` is what the VAE stage calls: with the loss off it returns None; a configured
`reader.pretrained` is loaded as is; a complete reader already in `<output_dir>/vae_reader` is reused (a
rerun); otherwise one is trained there first on the data module's clean training lines (no VAE exists yet).
Its CER on the validation lines goes to `<output_dir>/vae_reader/metrics.json`. The same readers serve as
`heldout.style_reader` (a style line's text read for its width).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from imuru_pl.data.batch import line_loader
from imuru_pl.errors import UserError
from imuru_pl.metrics.cer import cer
from imuru_pl.models.reader import LineReader, check_reader_dir
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.weights_dir import is_weights_dir

log = logging.getLogger(__name__)

VAE_READER_SUBDIR = "vae_reader"
METRICS_FILE = "metrics.json"


def check_reader_config(rcfg: DictConfig) -> None:
    """One sentence for a reader setting no run could use."""
    train = rcfg.train
    checks = [
        (int(train.steps) >= 1, f"reader.train.steps must be at least 1, not {train.steps}"),
        (int(train.batch_size) >= 1, f"reader.train.batch_size must be at least 1, not {train.batch_size}"),
        (float(train.lr) > 0, f"reader.train.lr must be positive, not {train.lr}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message + ".")
    if rcfg.get("pretrained"):  # a wrong path fails now, not after the data is rendered
        check_reader_dir(to_absolute_path(str(rcfg.pretrained)))


def ensure_vae_reader(cfg: DictConfig, output_dir: Path, datamodule) -> LineReader | None:
    """The frozen reader of the VAE's recognition loss, or None when `vae.train.reader_weight` is 0:
    `reader.pretrained` when set; otherwise one trained on the clean training lines (the `reader` group's
    arch and training) into `<output_dir>/vae_reader`, or the one already there."""
    weight = float(cfg.vae.train.get("reader_weight", 0.0))
    if weight < 0:
        raise UserError(f"vae.train.reader_weight must be 0 (off) or positive, not {weight}.")
    if weight == 0:
        return None
    rcfg = cfg.reader
    check_reader_config(rcfg)
    if cfg.vae.train.get("crop_width") is not None and "target_starts" not in datamodule.dataset("train")[0]:
        raise UserError("vae.train.reader_weight reads the whole letters of each crop, and only the synthetic data "
                        "knows where letters are: set vae.train.crop_width=null to read whole lines instead.")
    return _load_or_train(rcfg, Path(output_dir) / VAE_READER_SUBDIR, datamodule, int(cfg.seed))


def _load_or_train(rcfg: DictConfig, directory: Path, datamodule, seed: int) -> LineReader:
    if rcfg.get("pretrained"):
        reader = LineReader.from_pretrained(to_absolute_path(str(rcfg.pretrained)))
        log.info("Using the pretrained line reader %s", rcfg.pretrained)
        return reader
    if is_weights_dir(directory):
        log.info("Reusing the line reader already in %s", directory)
        return LineReader.from_pretrained(directory)
    train_reader(rcfg, directory, datamodule, seed)
    return LineReader.from_pretrained(directory)


def train_reader(rcfg: DictConfig, directory: Path, datamodule, seed: int) -> dict[str, Any]:
    """Fit a fresh reader on the training lines, save it in `directory`, and return its figures."""
    train = rcfg.train
    started = time.time()
    torch.manual_seed(seed)
    reader = LineReader(**dict(rcfg.arch)).train()
    loader = line_loader(datamodule.dataset("train"), int(train.batch_size), shuffle=True)
    if len(loader) == 0:
        raise UserError("The line reader has no training lines to learn from.")
    optimizer = torch.optim.AdamW(reader.parameters(), lr=float(train.lr), weight_decay=0.0)
    steps, warmup = int(train.steps), int(train.get("warmup_steps", 0))

    def factor(step: int) -> float:  # linear warm-up, then cosine to 5 % of lr
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    log.info("Training the line reader (%d steps of %d lines) into %s", steps, int(train.batch_size), directory)
    step, recent = 0, []
    while step < steps:
        for batch in loader:
            loss = reader.ctc(batch.target, batch.target_widths, encode_texts(batch.texts)[0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(reader.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            recent = (recent + [loss.item()])[-50:]
            step += 1
            if step % 250 == 0 or step == steps:
                log.info("reader step %d: CTC loss %.3f", step, sum(recent) / len(recent))
            if step >= steps:
                break
    reader.eval()
    metrics = {"steps": steps, "train_loss": round(sum(recent) / len(recent), 4),
               **reading_cer(reader, datamodule.dataset("val"), int(train.eval_lines)),
               "minutes": round((time.time() - started) / 60, 2)}
    reader.save_pretrained(directory)
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("Line reader: validation CER %.3f (%s)", metrics.get("cer_val_clean", float("nan")),
             directory / METRICS_FILE)
    return metrics


def reading_cer(reader: LineReader, dataset, lines: int) -> dict[str, float]:
    """The reader's CER on the first `lines` lines of `dataset`, as rendered."""
    if lines < 1 or len(dataset) == 0:
        return {}
    loader = line_loader(torch.utils.data.Subset(dataset, range(min(lines, len(dataset)))), 16, shuffle=False)
    read, texts = [], []
    for batch in loader:
        read += reader.read(batch.target, batch.target_widths)
        texts += batch.texts
    return {"cer_val_clean": round(cer(read, texts), 4), "eval_lines": len(texts)}
