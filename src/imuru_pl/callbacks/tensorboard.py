"""TensorBoard beyond the curves: the run's resolved config as text, and its main hyper-parameters with
its final metrics in the HParams view, so the runs of a sweep line up in one table.

Tags, grouped by stage: `train/*` (loss, lr), `val/*` (loss, `val/samples` images), `eval/*` (held-out
writers after training: `eval/hwd`, `eval/cer_fake`, ..., and the wrong-writer baseline under
`eval/wrong_writer/*`), `curve/*` (the legibility curve during training: OCR CER, stop rate and width error
every N steps, callbacks/legibility.py) and `val/best_loss` (the exported weights' validation loss). The VAE
stage writes its own run in the `vae/` sub-folder.

The callback writes the config at the start of `fit`; the HParams entry is written once, by
`log_final_metrics`, after the held-out evaluation that follows `fit` (the train task calls it).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from imuru_pl.console import config_yaml, current_config
from imuru_pl.metrics.report import scalars

log = logging.getLogger(__name__)

# HParams column -> config key. Missing keys (another model or data config) are left out.
HPARAM_KEYS: dict[str, str] = {
    "style_enc": "model.style_enc",
    "label_noise": "model.label_noise",
    "style_noise": "model.style_noise",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "scheduler": "optim.scheduler",
    "warmup_steps": "optim.warmup_steps",
    "ema_decay": "optim.ema_decay",
    "batch_size": "data.batch_size",
    "accumulate_grad_batches": "trainer.accumulate_grad_batches",
    "devices": "trainer.devices",
    "max_steps": "trainer.max_steps",
    "max_width": "data.max_width",
    "precision": "trainer.precision",
    "seed": "seed",
    "t5.d_model": "model.t5.d_model",
    "t5.num_layers": "model.t5.num_layers",
    "t5.num_decoder_layers": "model.t5.num_decoder_layers",
    "t5.num_heads": "model.t5.num_heads",
    "t5.d_ff": "model.t5.d_ff",
    "init_from": "init_from",
}
# Config groups whose chosen option names a run better than its values (`model/t5=small`).
HPARAM_CHOICES = ("experiment", "data", "model/t5", "vae")
# Always shown as text, so that runs with `32` and `bf16-mixed` share one column type.
TEXT_KEYS = {"precision", "devices", "init_from"}
# The metrics in the HParams table (the other eval/* scalars are logged beside them).
HPARAM_METRICS = ("val/best_loss", "eval/hwd", "eval/fid", "eval/cer_fake", "eval/delta_cer",
                  "eval/stop_rate", "eval/width_error", "eval/wrong_writer/hwd")
EVALUATION_FILE = "evaluation.json"


def tensorboard_loggers(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _hydra_choices() -> dict[str, str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    except Exception:  # noqa: BLE001 - outside Hydra there are simply no choices to show
        return {}


def _hparam_value(name: str, value: Any) -> int | float | str | bool:
    if value is None:
        return "none"
    if name in TEXT_KEYS or not isinstance(value, (int, float, str, bool)):
        return str(value)
    return value


def hparams_from_config(cfg: DictConfig, keys: dict[str, str] | None = None) -> dict[str, int | float | str | bool]:
    """A flat dict of the run's main settings: what the HParams view and `hparams.yaml` show."""
    params: dict[str, int | float | str | bool] = {}
    choices = _hydra_choices()
    for group in HPARAM_CHOICES:
        if choices.get(group) is not None:
            params[f"config/{group}"] = str(choices[group])
    for name, key in (keys or HPARAM_KEYS).items():
        try:
            value = OmegaConf.select(cfg, key, default="__missing__", throw_on_resolution_failure=False)
        except Exception as err:  # noqa: BLE001 - an unresolvable value is left out, not fatal
            log.debug("HParams: %s left out (%s)", key, err)
            continue
        if value != "__missing__" and not isinstance(value, DictConfig):
            params[name] = _hparam_value(name, value)
    return params


def config_markdown(cfg: DictConfig) -> str:
    """The resolved config as a YAML code block (TensorBoard's text tab renders Markdown)."""
    return f"```yaml\n{config_yaml(cfg)}```"


class TensorBoardSummary(L.Callback):
    """At the start of fit: the resolved config as text (`config`) and the main settings in `hparams.yaml`.

    `config` defaults to the running task's config (see `imuru_pl.console.task`), so the YAML entry needs
    no arguments.
    """

    def __init__(self, config: DictConfig | dict | None = None, hparam_keys: dict[str, str] | None = None):
        self.config = OmegaConf.create(config) if isinstance(config, dict) else config
        self.hparam_keys = dict(hparam_keys) if hparam_keys else None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = tensorboard_loggers(trainer)
        cfg = self.config if self.config is not None else current_config()
        if not loggers or not trainer.is_global_zero:
            return
        if cfg is None:
            log.warning("No run config to write to TensorBoard (run the task through run.py or pass config=).")
            return
        params = hparams_from_config(cfg, self.hparam_keys)
        text = config_markdown(cfg)
        for logger in loggers:
            # Without metrics this only records the settings for hparams.yaml (`default_hp_metric: false`);
            # the HParams entry itself waits for the final metrics.
            logger.log_hyperparams(params)
            logger.experiment.add_text("config", text, global_step=trainer.global_step)


def best_val_loss(trainer: L.Trainer) -> float | None:
    """The best `val/loss` that a checkpoint callback kept: the score of the weights training exports."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None) == "val/loss" and getattr(callback, "best_model_score", None) is not None:
            score = float(callback.best_model_score)
            if math.isfinite(score):
                return score
    return None


def heldout_scalars(heldout_dir: str | Path | None) -> dict[str, float]:
    """`eval/*` scalars from a held-out evaluation report (generated and wrong-writer sets), if one exists."""
    path = Path(heldout_dir) / EVALUATION_FILE if heldout_dir else None
    if path is None or not path.is_file():
        return {}
    report = json.loads(path.read_text("utf-8"))
    metrics = {f"eval/{k}": v for k, v in scalars(report.get("generated", {})).items()}
    metrics.update({f"eval/wrong_writer/{k}": v for k, v in scalars(report.get("wrong_writer", {})).items()})
    return metrics


def final_metrics(trainer: L.Trainer, result: dict | None = None) -> dict[str, float]:
    """What a finished run scored: best validation loss and the held-out metrics."""
    metrics: dict[str, float] = {}
    best = best_val_loss(trainer)
    if best is not None:
        metrics["val/best_loss"] = best
    metrics.update(heldout_scalars((result or {}).get("heldout_dir")))
    if not metrics:  # no validation and no held-out lines: the last training loss still ranks runs
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None and math.isfinite(float(loss)):
            metrics["train/final_loss"] = float(loss)
    return metrics


@rank_zero_only
def log_final_metrics(trainer: L.Trainer, cfg: DictConfig, result: dict | None = None) -> dict[str, float]:
    """After training and the held-out evaluation: final metrics as scalars at the last step, and the
    run's settings with those metrics in TensorBoard's HParams view. Returns the metrics logged."""
    loggers = tensorboard_loggers(trainer)
    metrics = final_metrics(trainer, result)
    if not loggers or not metrics:
        return metrics
    summary = next((c for c in trainer.callbacks if isinstance(c, TensorBoardSummary)), None)
    params = hparams_from_config(cfg, summary.hparam_keys if summary is not None else None)
    table = {k: v for k, v in metrics.items() if k in HPARAM_METRICS} or metrics
    rest = {k: v for k, v in metrics.items() if k not in table}
    for logger in loggers:
        logger.log_metrics(rest, step=trainer.global_step)
        logger.log_hyperparams(params, table, step=trainer.global_step)
        logger.save()
        logger.finalize("success")  # fit already closed the writer; this flushes the new events
    log.info("Final metrics to TensorBoard: %s", ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics
