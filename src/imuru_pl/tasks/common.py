"""Pieces every training task shares: seeding, building the Trainer with its callbacks and loggers."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError

from imuru_pl.bundled import resolve
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)


def artefact_dir(value) -> Path:
    """A directory named on the command line (relative to where the command started), or a bundled name
    (`starter`, `line_vae`) when no such directory exists."""
    return resolve(str(value), to_absolute_path(str(Path(str(value)).expanduser())))


def output_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group that has a `_target_` (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def build_trainer(cfg: DictConfig, overrides: dict | None = None, callbacks: list | None = None,
                  logger: bool = True) -> L.Trainer:
    """The Trainer of `cfg.trainer`, with `overrides` merged on top, plus the configured callbacks/loggers."""
    trainer_cfg = OmegaConf.merge(cfg.trainer, overrides or {})
    loggers = instantiate_group(cfg.get("logger")) if logger else []
    return instantiate(trainer_cfg, callbacks=instantiate_group(cfg.get("callbacks")) + (callbacks or []),
                       logger=loggers or False)


def stage_data_config(cfg: DictConfig, stage: str, label: str) -> DictConfig:
    """`data` with `<stage>.data` merged over it (a stage's own fonts or sizes, e.g. more training hands),
    with plain shuffled batches (a text-length curriculum is for the Imuru stage). `label` names the stage in
    the error a wrong key gets."""
    try:
        data_cfg = OmegaConf.merge(cfg.data, OmegaConf.select(cfg, f"{stage}.data") or {})
    except ConfigKeyError as err:
        raise UserError(f"{stage}.data.{err.key} is not a key of data: {stage}.data only changes keys the "
                        f"data config has, for {label}.") from None
    with open_dict(data_cfg):
        if "curriculum" in data_cfg:
            data_cfg.curriculum = {"steps": 0}
    return data_cfg
