"""Train Imuru: get a frozen VAE (given or trained first), fit the T5, export, write held-out lines."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from imuru_pl.callbacks.checkpoint import precheck_ckpt_path, resolve_ckpt_path
from imuru_pl.callbacks.tensorboard import log_final_metrics
from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.imuru_module import ImuruModule
from imuru_pl.models.reference_checkpoint import load_model_dir
from imuru_pl.models.schedules import check_optim_config
from imuru_pl.models.vae import LineVAE
from imuru_pl.pipeline import ImuruPipeline
from imuru_pl.precision import resolve_auto
from imuru_pl.tasks.common import artefact_dir, build_trainer, output_dir
from imuru_pl.tasks.duration_fit import check_aligned, fit_settings, refit_durations
from imuru_pl.tasks.heldout import model_pipeline, style_reader, write_heldout_lines
from imuru_pl.tasks.train_reader import check_reader_config
from imuru_pl.tasks.train_vae import ensure_vae

log = logging.getLogger(__name__)

EXPORT_SUBDIR = "model"


def build_module(cfg: DictConfig, vae: LineVAE, model: Imuru | None = None, datamodule=None) -> ImuruModule:
    """The LightningModule; the latent cache is on when the data module keeps it on (fixed lines only)."""
    model = model if model is not None else instantiate(cfg.model, _convert_="all")
    model.use_vae_stats(vae)  # latent normalisation, padding latent and stop threshold
    cache = getattr(datamodule, "latent_cache", None) if datamodule is not None else None
    cache = bool(cfg.data.get("latent_cache", False)) if cache is None else bool(cache)
    return ImuruModule(model, vae, OmegaConf.to_container(cfg.optim, resolve=True), latent_cache=cache)


def best_weights(trainer: L.Trainer, module: ImuruModule) -> None:
    """Load the best-by-validation checkpoint's weights into `module` (weights only, no pickles)."""
    callback = next((cb for cb in trainer.checkpoint_callbacks if getattr(cb, "monitor", None)), None)
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    if path and Path(path).is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        log.info("Exporting the best checkpoint by val/loss: %s", path)


def export_choice(cfg: DictConfig) -> str:
    choice = str(cfg.get("export_weights", "best"))
    if choice not in ("best", "last"):
        raise UserError(f"export_weights must be best or last, not {choice!r}.")
    return choice


def init_dir(cfg: DictConfig) -> Path | None:
    """`init_from`: an exported model (or a reference checkpoint, or the bundled name `starter`) whose weights
    and frozen VAE training starts from."""
    init_from = cfg.get("init_from")
    return artefact_dir(init_from) if init_from else None


def run(cfg: DictConfig) -> dict:
    started = time.time()
    resolve_auto(cfg)  # trainer.precision=auto, model.attention=auto: what this machine trains fastest
    L.seed_everything(cfg.seed, workers=True)
    out = output_dir(cfg)
    precheck_ckpt_path(cfg.get("ckpt_path"))  # a wrong path fails now, not after the VAE has trained
    check_reader_config(cfg.reader)
    check_optim_config(cfg.optim)  # before the VAE stage, not after it
    heldout = cfg.get("heldout") or {}  # its style reader, too, is checked before training rather than after
    style_reader(heldout.get("style_reader"), bool(heldout.get("style_text_widths", False)))
    if heldout.get("compare_with"):  # and the model whose lines go beside the run's own
        model_pipeline(heldout.compare_with)
    export_choice(cfg)
    refit = fit_settings(cfg) is not None  # its settings and data keys, too, before training
    init = init_dir(cfg)
    model = None
    if refit and init is None:  # before the VAE stage, not after it
        check_aligned(bool((cfg.model.get("letters") or {}).get("enabled", False)))
    datamodule = instantiate(cfg.data)  # its paths and shard patterns are checked now, not after the VAE stage
    if init is None:
        vae_dir = ensure_vae(cfg, out)
        vae = LineVAE.from_pretrained(vae_dir)
    else:  # the VAE comes with the model it was trained with, and stays frozen
        pipeline = load_model_dir(init, allow_emuru=True)
        vae_dir, vae, model = init, pipeline.vae, pipeline.model.train()  # Lightning keeps the mode it finds
        log.info("Starting from %s: its Imuru weights and its VAE (cfg.model, cfg.vae unused).", init)
        if refit:
            check_aligned(model.letters is not None)
    module = build_module(cfg, vae, model, datamodule)
    trainer = build_trainer(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), module, trainer)  # a checked file, or a UserError
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    result = {"output_dir": str(out), "vae_dir": str(vae_dir), "global_step": trainer.global_step,
              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
    if trainer.is_global_zero and not trainer.fast_dev_run:
        if export_choice(cfg) == "best":
            best_weights(trainer, module)
        else:
            log.info("Exporting the weights training ended with (step %d).", trainer.global_step)
        refit_error = None
        if refit:
            try:
                result["duration_fit"] = refit_durations(cfg, module.eval_model, vae.to(module.device))
            except UserError as err:  # the hour of training is exported all the same, and the run fails after
                refit_error = err
        result.update(_export_and_write(cfg, module, vae, datamodule, out))
        log_final_metrics(trainer, cfg, result)  # eval/* scalars + the HParams entry
        if refit_error is not None:
            raise UserError(f"{refit_error} The model is exported without the refit: {result['model_dir']}.")
    result["minutes"] = round((time.time() - started) / 60, 2)
    _report(result)
    return result


def _export_and_write(cfg: DictConfig, module: ImuruModule, vae: LineVAE, datamodule, out: Path) -> dict:
    pipeline = ImuruPipeline(module.eval_model.cpu(), vae.cpu())  # the moving average when it is on
    export_dir = pipeline.save_pretrained(out / EXPORT_SUBDIR)
    log.info("Exported model: %s", export_dir)
    return {"model_dir": str(export_dir), **write_heldout_lines(cfg, pipeline, datamodule, out)}


@rank_zero_only
def _report(result: dict) -> None:
    log.info("Done in %.1f min. Outputs: %s", result["minutes"], result["output_dir"])
