"""Train the line VAE, measure its stop constants, save it, and report held-out reconstruction quality.

`ensure_vae` is what the Imuru training task calls: a configured `vae.pretrained` is validated and
used as is; a complete VAE already in `<output_dir>/vae` is reused (a rerun, or a DDP child process);
otherwise one is trained there first.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from imuru_pl.bundled import resolve
from imuru_pl.errors import UserError
from imuru_pl.metrics.reconstruction import reconstruction_cer
from imuru_pl.models.reader import LineReader
from imuru_pl.models.vae import CONSTANTS_FILE, LineVAE
from imuru_pl.models.vae_module import ReconstructionGrid, VAEModule, masked_image_errors, start_white
from imuru_pl.precision import resolve_auto
from imuru_pl.tasks.common import stage_data_config
from imuru_pl.tasks.train_reader import ensure_vae_reader

log = logging.getLogger(__name__)

VAE_SUBDIR = "vae"
METRICS_FILE = "vae_metrics.json"
SAMPLES_SUBDIR = "vae_samples"


def build_vae(cfg: DictConfig) -> LineVAE:
    """A freshly initialised LineVAE from `cfg.vae.arch` (a diffusers AutoencoderKL config)."""
    try:
        autoencoder = instantiate(cfg.vae.arch, _convert_="all")
    except Exception as err:
        raise UserError(
            f"vae.arch does not build a diffusers AutoencoderKL ({type(err).__name__}: {err})."
        ) from err
    vae = LineVAE(autoencoder)
    return start_white(vae) if cfg.vae.train.get("white_init", True) else vae


def check_one_vae_source(cfg: DictConfig) -> None:
    """`vae.pretrained` (used as is) and `vae.init_from` (trained further) exclude each other."""
    if cfg.vae.get("pretrained") and cfg.vae.get("init_from"):
        raise UserError("vae.pretrained (used as is) and vae.init_from (trained further) are both set: "
                        "keep one.")


def initial_vae(cfg: DictConfig) -> LineVAE:
    """What the VAE stage starts from: the saved VAE `vae.init_from` (trained further: a second schedule of
    `vae.train`, e.g. on more data), or a new one from `vae.arch`."""
    check_one_vae_source(cfg)
    init_from = cfg.vae.get("init_from")
    if not init_from:
        return build_vae(cfg)
    vae = LineVAE.from_pretrained(str(init_from), require_constants=False).train()  # loaded in eval mode
    log.info("Training on from the line VAE %s (vae.arch is not used).", init_from)
    return vae


def build_datamodule(cfg: DictConfig):
    """The configured data module with `vae.data` merged over `data` (this stage's own fonts or sizes, e.g.
    more training hands), switched to same-line pairs (style and clean target of one line) and plain
    shuffled batches (a text-length curriculum is for the Imuru stage)."""
    data_cfg = stage_data_config(cfg, "vae", "the VAE stage")
    batch_size = cfg.vae.train.get("batch_size")
    with open_dict(data_cfg):
        if batch_size and "batch_size" in data_cfg:
            data_cfg.batch_size = batch_size
    return instantiate(data_cfg, pairing="same_line")


def build_trainer(cfg: DictConfig, callbacks: list) -> L.Trainer:
    """`cfg.trainer` with `cfg.vae.trainer` merged on top and the step budget of `cfg.vae.train`."""
    overrides = OmegaConf.to_container(cfg.vae.get("trainer") or {}, resolve=True)
    trainer_cfg = OmegaConf.merge(cfg.trainer, overrides, {"max_steps": int(cfg.vae.train.max_steps)})
    loggers = [
        _stage_logger(entry)
        for entry in (cfg.get("logger") or {}).values()
        if isinstance(entry, DictConfig) and "_target_" in entry
    ]
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)


def _stage_logger(entry: DictConfig):
    """The run's logger, with TensorBoard writing into a `vae` sub-folder so Imuru's curves stay apart."""
    if str(entry._target_).endswith("TensorBoardLogger"):
        return instantiate(entry, sub_dir=VAE_SUBDIR)
    return instantiate(entry)


def build_module(cfg: DictConfig, vae: LineVAE, reader: LineReader | None = None) -> VAEModule:
    """The LightningModule with the losses and schedule of `cfg.vae.train` (and its reader, if any)."""
    t = cfg.vae.train
    return VAEModule(
        vae,
        lr=t.lr,
        weight_decay=t.weight_decay,
        betas=tuple(t.betas),
        warmup_steps=t.warmup_steps,
        min_lr_ratio=t.min_lr_ratio,
        kl_weight=t.kl_weight,
        mse_weight=t.mse_weight,
        edge_weight=t.edge_weight,
        ink_weight=t.get("ink_weight", 0.0),
        crop_width=t.crop_width,
        clean_fraction=t.clean_fraction,
        sample_posterior=t.sample_posterior,
        reader=reader,
        reader_weight=float(t.get("reader_weight", 0.0)) if reader is not None else 0.0,
    )


def _device(trainer: L.Trainer) -> torch.device:
    root = trainer.strategy.root_device
    return root if root.type != "meta" else torch.device("cpu")


@torch.no_grad()
def heldout_reconstruction(vae: LineVAE, dataloader, max_lines: int) -> dict[str, float]:
    """Mean per-line L1 ([-1, 1]) and PSNR ([0, 1], dB) over true widths, from style and from clean input."""
    sums = {"l1": 0.0, "psnr": 0.0, "l1_clean": 0.0, "psnr_clean": 0.0}
    lines = 0
    device = next(vae.parameters()).device
    for batch in dataloader:
        batch = batch.to(device)
        keep = min(len(batch), max_lines - lines)
        for suffix, images in (("", batch.style[:keep]), ("_clean", batch.target[:keep])):
            l1, psnr = masked_image_errors(vae(images), batch.target[:keep], batch.target_widths[:keep])
            sums[f"l1{suffix}"] += float(l1.sum())
            sums[f"psnr{suffix}"] += float(psnr.sum())
        lines += keep
        if lines >= max_lines:
            break
    if lines == 0:
        raise UserError("The data module's validation split is empty: the VAE cannot be evaluated.")
    return {**{k: v / lines for k, v in sums.items()}, "lines": lines}


def train_vae(cfg: DictConfig, directory: Path) -> dict[str, Any]:
    """Fit a VAE from config, measure its stop constants on training lines, save it to `directory`."""
    started = time.time()
    out = directory.parent
    vae = initial_vae(cfg)
    datamodule = build_datamodule(cfg)
    grid = ReconstructionGrid(
        every_n_steps=int(cfg.vae.train.image_every_n_steps), directory=out / SAMPLES_SUBDIR
    )
    reader = ensure_vae_reader(cfg, out, datamodule)  # None unless vae.train.reader_weight > 0
    trainer = build_trainer(cfg, [grid])
    module = build_module(cfg, vae, reader)
    log.info(
        "Training the line VAE (%.2f M parameters) for %d steps.",
        sum(p.numel() for p in vae.parameters()) / 1e6,
        int(cfg.vae.train.max_steps),
    )
    fit_started = time.time()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.time() - fit_started
    result: dict[str, Any] = {"vae_dir": str(directory)}
    if trainer.is_global_zero:
        result.update(_measure_and_save(cfg, vae, datamodule, trainer, directory))
        steps = max(1, trainer.global_step)
        result.update(
            steps=trainer.global_step,
            train_minutes=round(fit_seconds / 60, 2),
            s_per_step=round(fit_seconds / steps, 4),
            minutes=round((time.time() - started) / 60, 2),
            parameters=sum(p.numel() for p in vae.parameters()),
            reconstruction_grid=str(grid.last_path) if grid.last_path else None,
        )
        _write_metrics(out / METRICS_FILE, result)
        _log_to_trainer(trainer, result)
    trainer.strategy.barrier()
    return result


def _measure_and_save(cfg: DictConfig, vae: LineVAE, datamodule, trainer: L.Trainer, directory: Path) -> dict:
    t = cfg.vae.train
    vae.to(_device(trainer)).eval()
    stop = vae.measure_stop_constants(datamodule.train_dataloader(), max_lines=int(t.stop_lines))
    heldout_stop = vae.stop_accuracy(datamodule.val_dataloader(), max_lines=int(t.eval_lines))
    heldout = heldout_reconstruction(vae, datamodule.val_dataloader(), int(t.eval_lines))
    ocr_lines = int(t.get("ocr_lines", 0))
    if ocr_lines > 0 and bool(cfg.metrics.ocr.enabled):  # do letters survive the round trip?
        heldout["ocr"] = reconstruction_cer(vae, datamodule.val_dataloader(), ocr_lines, cfg.metrics)
        log.info("Held-out reconstruction CER %.3f against %.3f for the original lines (%d lines).",
                 heldout["ocr"]["cer_reconstruction"], heldout["ocr"]["cer_original"], heldout["ocr"]["lines"])
    vae.to("cpu")
    vae.save_pretrained(directory)
    log.info(
        "Held-out reconstruction over %d lines: L1 %.4f, PSNR %.2f dB from style images "
        "(L1 %.4f, PSNR %.2f dB from clean lines); stop accuracy blank %.1f%% / ink %.1f%%.",
        heldout["lines"],
        heldout["l1"],
        heldout["psnr"],
        heldout["l1_clean"],
        heldout["psnr_clean"],
        100 * heldout_stop["blank_accuracy"],
        100 * heldout_stop["ink_accuracy"],
    )
    log.info("Saved the line VAE to %s", directory)
    return {"heldout": heldout, "stop": stop.to_dict(), "stop_heldout": heldout_stop}


@rank_zero_only
def _write_metrics(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def _log_to_trainer(trainer: L.Trainer, result: dict) -> None:
    metrics = {f"heldout/{k}": v for k, v in result["heldout"].items() if k not in ("lines", "ocr")}
    for key, value in result["heldout"].get("ocr", {}).items():
        if key != "lines":
            metrics[f"heldout/{key}"] = value
    metrics["heldout/stop_balanced_accuracy"] = result["stop_heldout"]["balanced_accuracy"]
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()


def _complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / CONSTANTS_FILE).is_file()


def ensure_vae(cfg: DictConfig, output_dir: Path) -> Path:
    """A loadable line VAE for the Imuru stage: the configured one, one already trained here, or a new one."""
    check_one_vae_source(cfg)
    pretrained = cfg.vae.get("pretrained")
    if pretrained:
        LineVAE.from_pretrained(pretrained)  # fail early, in one sentence, if it does not load
        path = resolve(str(pretrained))  # a bundled name (line_vae) as the package folder it names
        log.info("Using the pretrained line VAE %s", pretrained if path == Path(str(pretrained)) else
                 f"{pretrained} ({path})")
        return path
    directory = Path(output_dir) / VAE_SUBDIR
    if _complete(directory):
        LineVAE.from_pretrained(directory)
        log.info("Reusing the line VAE already in %s", directory)
        return directory
    train_vae(cfg, directory)
    return directory


def run(cfg: DictConfig) -> dict[str, Any]:
    """Task `train_vae`: train, measure and save a line VAE in `<output_dir>/vae`; return its figures."""
    resolve_auto(cfg)  # trainer.precision=auto (and vae.trainer's): what this machine trains fastest
    if cfg.vae.get("pretrained"):  # the demo's recipes name the bundled VAE for task=train; this task trains one
        log.info("task=train_vae trains a line VAE: vae.pretrained=%s (what task=train uses) is left out.",
                 cfg.vae.pretrained)
        cfg.vae.pretrained = None
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return train_vae(cfg, out / VAE_SUBDIR)
