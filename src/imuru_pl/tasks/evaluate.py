"""`python run.py task=evaluate fake=<dir> real=<dir> [report=<file.json>]`: score two HWD-layout folders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from imuru_pl.errors import UserError
from imuru_pl.metrics import evaluate_folders, format_table, save_report

log = logging.getLogger(__name__)

# metrics keys that hold paths a user types on the command line
_PATH_KEYS = ("hwd.backbone", "fid.inception_weights", "ocr.trocr_dir")


def metrics_config(cfg: DictConfig) -> DictConfig:
    """The metrics node with user paths made absolute (relative to where the command was started)."""
    metrics = OmegaConf.create(OmegaConf.to_container(cfg.get("metrics") or {}, resolve=True))
    for key in _PATH_KEYS:
        value = OmegaConf.select(metrics, key)
        if value:
            OmegaConf.update(metrics, key, to_absolute_path(str(value)))
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate `fake` against `real`, log a table and save the JSON report."""
    for key in ("fake", "real"):
        if not cfg.get(key):
            raise UserError(
                f"task=evaluate needs {key}=<folder> (the HWD layout: <dir>/<writer>/<image>.png)."
            )
    fake, real = to_absolute_path(str(cfg.fake)), to_absolute_path(str(cfg.real))
    report = evaluate_folders(fake, real, metrics_config(cfg))
    target = (
        Path(to_absolute_path(str(cfg.report)))
        if cfg.get("report")
        else Path(cfg.paths.output_dir) / "evaluation.json"
    )
    if target.is_dir():
        raise UserError(
            f"report={cfg.report} is a folder; give a file name such as {target / 'evaluation.json'}."
        )
    save_report(report, target)
    log.info("Evaluation of %s against %s\n%s", fake, real, format_table(report))
    log.info("Report saved to %s", target)
    return report
