"""Train the line reader that the Imuru stage's recognition loss reads with (`reader.weight` > 0).

`ensure_reader` is what the training task calls: with the loss off it returns None; a configured
`reader.pretrained` is loaded as is; a complete reader already in `<output_dir>/reader` is reused (a
rerun); otherwise one is trained there first on the data module's training lines. A share of each
batch (`reader.train.vae_fraction`) is drawn back by the frozen VAE first, because what the reader
will read are the VAE's drawings. Its CER on the validation lines, clean and through the VAE, goes to
`<output_dir>/reader/metrics.json`.

`ensure_vae_reader` does the same for the VAE stage's recognition loss (`vae.train.reader_weight`), in
`<output_dir>/vae_reader`, on clean lines only: no VAE exists yet.
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
from omegaconf import DictConfig, open_dict

from imuru_pl.data.batch import LineBatch, line_loader
from imuru_pl.errors import UserError
from imuru_pl.metrics.cer import cer
from imuru_pl.models.reader import LineReader, check_reader_dir
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.vae import LineVAE
from imuru_pl.models.weights_dir import is_weights_dir

log = logging.getLogger(__name__)

READER_SUBDIR = "reader"
VAE_READER_SUBDIR = "vae_reader"
METRICS_FILE = "metrics.json"


def check_reader_config(rcfg: DictConfig) -> None:
    """One sentence for a reader setting no run could use."""
    train = rcfg.train
    checks = [
        (float(rcfg.weight) >= 0, f"reader.weight must be 0 (off) or positive, not {rcfg.weight}"),
        (int(rcfg.lines) >= 1, f"reader.lines must be at least 1, not {rcfg.lines}"),
        (int(rcfg.start_step) >= 0, f"reader.start_step must be 0 or more, not {rcfg.start_step}"),
        (int(train.steps) >= 1, f"reader.train.steps must be at least 1, not {train.steps}"),
        (int(train.batch_size) >= 1, f"reader.train.batch_size must be at least 1, not {train.batch_size}"),
        (float(train.lr) > 0, f"reader.train.lr must be positive, not {train.lr}"),
        (0.0 <= float(train.vae_fraction) <= 1.0,
         f"reader.train.vae_fraction must lie in [0, 1], not {train.vae_fraction}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message + ".")
    if float(rcfg.weight) > 0 and rcfg.get("pretrained"):  # a wrong path fails now, not after the VAE trains
        check_reader_dir(to_absolute_path(str(rcfg.pretrained)))


def ensure_reader(cfg: DictConfig, output_dir: Path, vae: LineVAE, datamodule) -> LineReader | None:
    """The frozen reader of the recognition loss, or None when `reader.weight` is 0."""
    rcfg = cfg.reader
    check_reader_config(rcfg)
    if float(rcfg.weight) == 0:
        return None
    return _load_or_train(rcfg, Path(output_dir) / READER_SUBDIR, vae, datamodule, int(cfg.seed))


def ensure_vae_reader(cfg: DictConfig, output_dir: Path, datamodule) -> LineReader | None:
    """The frozen reader of the VAE's recognition loss, or None when `vae.train.reader_weight` is 0.

    `reader.pretrained` when set; otherwise one trained on the clean training lines (the `reader` group's
    arch and training, `vae_fraction` 0) into `<output_dir>/vae_reader`, or the one already there.
    """
    weight = float(cfg.vae.train.get("reader_weight", 0.0))
    if weight < 0:
        raise UserError(f"vae.train.reader_weight must be 0 (off) or positive, not {weight}.")
    if weight == 0:
        return None
    rcfg = cfg.reader.copy()
    with open_dict(rcfg):
        rcfg.weight, rcfg.train.vae_fraction = weight, 0.0
    check_reader_config(rcfg)
    if cfg.vae.train.get("crop_width") is not None and "target_starts" not in datamodule.dataset("train")[0]:
        raise UserError("vae.train.reader_weight reads the whole letters of each crop, and only the synthetic data "
                        "knows where letters are: set vae.train.crop_width=null to read whole lines instead.")
    return _load_or_train(rcfg, Path(output_dir) / VAE_READER_SUBDIR, None, datamodule, int(cfg.seed))


def _load_or_train(rcfg: DictConfig, directory: Path, vae: LineVAE | None, datamodule, seed: int) -> LineReader:
    if rcfg.get("pretrained"):
        reader = LineReader.from_pretrained(to_absolute_path(str(rcfg.pretrained)))
        log.info("Using the pretrained line reader %s", rcfg.pretrained)
        return reader
    if is_weights_dir(directory):
        log.info("Reusing the line reader already in %s", directory)
        return LineReader.from_pretrained(directory)
    train_reader(rcfg, directory, vae, datamodule, seed)
    return LineReader.from_pretrained(directory)


@torch.no_grad()
def reader_images(batch: LineBatch, vae: LineVAE | None, share: float, sample: bool = True) -> torch.Tensor:
    """The batch's clean targets (B, 1, 64, W), the first `share` of them drawn back by the VAE (if any)."""
    images = batch.target.clone()
    count = round(share * len(batch)) if vae is not None else 0
    if count:
        images[:count] = vae.decode(vae.encode(images[:count], sample=sample)).to(images.dtype)
    return images


def train_reader(rcfg: DictConfig, directory: Path, vae: LineVAE | None, datamodule, seed: int) -> dict[str, Any]:
    """Fit a fresh reader on the training lines (a share drawn back by `vae`, if given), save it in
    `directory`, and return its figures."""
    train = rcfg.train
    started = time.time()
    torch.manual_seed(seed)
    reader = LineReader(**dict(rcfg.arch)).train()
    vae = vae.freeze() if vae is not None else None
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
            images = reader_images(batch, vae, float(train.vae_fraction))
            loss = reader.ctc(images, batch.target_widths, encode_texts(batch.texts)[0])
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
               **reading_cer(reader, vae, datamodule.dataset("val"), int(train.eval_lines)),
               "minutes": round((time.time() - started) / 60, 2)}
    reader.save_pretrained(directory)
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("Line reader: validation CER %.3f clean, %s through the VAE (%s)", metrics["cer_val_clean"],
             metrics.get("cer_val_vae", "not read"), directory / METRICS_FILE)
    return metrics


def reading_cer(reader: LineReader, vae: LineVAE | None, dataset, lines: int) -> dict[str, float]:
    """The reader's CER on the first `lines` lines of `dataset`: as rendered, and through the VAE (if any)."""
    if lines < 1 or len(dataset) == 0:
        return {}
    loader = line_loader(torch.utils.data.Subset(dataset, range(min(lines, len(dataset)))), 16, shuffle=False)
    clean, drawn, texts = [], [], []
    for batch in loader:
        clean += reader.read(batch.target, batch.target_widths)
        if vae is not None:
            drawn += reader.read(reader_images(batch, vae, 1.0, sample=False), batch.target_widths)
        texts += batch.texts
    figures = {"cer_val_clean": round(cer(clean, texts), 4), "eval_lines": len(texts)}
    if vae is not None:
        figures["cer_val_vae"] = round(cer(drawn, texts), 4)
    return figures
