"""`duration_fit`: after the T5 has trained, a width head (a copy of its duration head and the head's view of the
hand) trains on its own data while everything else stays frozen (docs/legibility.md).

The letters learn fastest from few hands, while the widths an unseen hand is planned with come out best
from a head that has seen many (experiment=legible_fonts: 121 font families against the eight the T5 trains
on). The head reads the frozen encoder's letter states and the style line's columns, so it trains alone: no
column is written, no decoder runs, and a step costs the style lines' encoding and little else. The letters'
states do not change; how wide each line is does. The trained head stays: each line is written at the widths
the T5 trained with and then resampled horizontally to the width head's (`AlignedLetters.line_columns`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from imuru_pl.data.batch import LineBatch
from imuru_pl.errors import UserError
from imuru_pl.models.alignment import batch_letters
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.letters import DurationPlanner
from imuru_pl.models.latents import LatentEncoder, column_counts
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.vae import LineVAE
from imuru_pl.tasks.common import stage_data_config

log = logging.getLogger(__name__)


def fit_settings(cfg: DictConfig) -> dict | None:
    """The checked `duration_fit` settings ({steps, lr, val_batches, log_every}), or None when it is off
    (no `duration_fit` section, or steps 0). Checked before training, with the data it would read."""
    section = cfg.get("duration_fit") or {}
    settings = {"steps": section.get("steps", 0) or 0, "lr": section.get("lr", 1e-3),
                "val_batches": section.get("val_batches", 8), "log_every": section.get("log_every", 200)}
    for key in ("steps", "val_batches", "log_every"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "steps" else 1):
            least = "0 (off)" if key == "steps" else "1"
            raise UserError(f"duration_fit.{key} is a whole number of at least {least}, not {value!r}.")
    lr = settings["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise UserError(f"duration_fit.lr is a positive learning rate, not {lr!r}.")
    if settings["steps"] == 0:
        return None
    stage_data_config(cfg, "duration_fit", "the duration fit")  # a wrong key fails now, not after training
    return settings


def check_aligned(has_letters: bool) -> None:
    """The stage needs a duration head: a model with aligned letters."""
    if not has_letters:
        raise UserError("duration_fit trains a width head from the duration head of a model with aligned letters "
                        "(model.letters.enabled=true); this model has none: set duration_fit.steps=0.")


def duration_loss(model: Imuru, latents: LatentEncoder, batch: LineBatch, sample: bool,
                  planner: DurationPlanner | None = None) -> torch.Tensor:
    """The duration loss on one batch: style columns from the frozen VAE, letter states from the frozen
    encoder, each target letter's columns from the batch's letter starts (real lines: spread evenly).
    `planner`: the width head's instead of the model's own."""
    device = model.latent_mean.device
    batch = batch.to(device)
    style, style_mask = latents.style(batch.style, batch.style_widths, batch.style_keys, sample)
    counts = column_counts(batch.target_widths)
    letter_index = batch_letters(batch, counts, int(counts.max()))
    text_ids, text_mask = (t.to(device) for t in encode_texts(batch.texts))
    with torch.no_grad():
        encoded = model.encode_text(text_ids, text_mask)
    return model.letters.duration_loss(encoded, text_ids, letter_index, counts, model.normalise(style),
                                       style_mask, planner)


@torch.no_grad()
def validation_loss(model: Imuru, latents: LatentEncoder, loader, batches: int,
                    planner: DurationPlanner | None = None) -> float:
    """Mean duration loss over the first `batches` validation batches (posterior means, no sampling)."""
    values = [float(duration_loss(model, latents, batch, sample=False, planner=planner))
              for _, batch in zip(range(batches), loader)]
    return sum(values) / max(1, len(values))


def _forever(datamodule) -> Iterator[LineBatch]:
    while True:
        yield from datamodule.train_dataloader()


def fit_durations(model: Imuru, vae: LineVAE, datamodule, settings: dict) -> dict[str, float]:
    """Train a width head copied from `model`'s duration planner for
    `settings['steps']` AdamW steps (constant rate, no weight decay) on `datamodule`'s training lines, in eval
    mode (no dropout), the rest frozen, each style line's latents encoded once and sampled at every use;
    returns the validation duration loss before and after, and the minutes."""
    check_aligned(model.letters is not None)
    started = time.time()
    planner = model.letters.add_width_head()
    trained = list(planner.parameters())
    flags = [p.requires_grad for p in model.parameters()]
    was_training, fitted = model.training, False
    model.eval().requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    latents = LatentEncoder(vae.eval(), cache=True)  # lines rendered once: each style line encoded once
    datamodule.setup("fit")
    val_loader = datamodule.val_dataloader()
    before = validation_loss(model, latents, val_loader, settings["val_batches"], planner)
    log.info("duration_fit: %d steps on %d parameters (%s); validation duration loss %.4f before.",
             settings["steps"], sum(p.numel() for p in trained), "a width head", before)
    optimizer = torch.optim.AdamW(trained, lr=float(settings["lr"]), weight_decay=0.0)
    try:
        for step, batch in zip(range(1, settings["steps"] + 1), _forever(datamodule)):
            loss = duration_loss(model, latents, batch, sample=True, planner=planner)
            if not torch.isfinite(loss):
                raise UserError(f"duration_fit: the duration loss was non-finite at step {step} (no width head "
                                "is kept; lines keep the trained plan's widths); lower duration_fit.lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % settings["log_every"] == 0:
                log.info("duration_fit step %d: training loss %.4f", step, float(loss.detach()))
        after = validation_loss(model, latents, val_loader, settings["val_batches"], planner)
        fitted = True
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)
        if not fitted:  # no half-fitted width head: lines keep the trained plan's widths
            model.letters.drop_width_head()
    minutes = (time.time() - started) / 60
    log.info("duration_fit: validation duration loss %.4f after %d steps (%.1f min).", after,
             settings["steps"], minutes)
    return {"val_duration_loss_before": before, "val_duration_loss_after": after, "steps": settings["steps"],
            "minutes": round(minutes, 2)}


def refit_durations(cfg: DictConfig, model: Imuru, vae: LineVAE) -> dict[str, float] | None:
    """Run the stage when `duration_fit.steps` > 0 (on `data` with `duration_fit.data` merged over it)."""
    settings = fit_settings(cfg)
    if settings is None:
        return None
    datamodule = instantiate(stage_data_config(cfg, "duration_fit", "the duration fit"))
    torch.manual_seed(int(cfg.get("seed", 0)))  # the same fit at the end of training and from the script
    return fit_durations(model, vae, datamodule, settings)
