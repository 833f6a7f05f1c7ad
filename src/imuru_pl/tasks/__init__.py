"""Tasks that run.py dispatches to. Each module exposes `run(cfg) -> dict | None`."""

import importlib
import logging
import sys

from omegaconf import DictConfig

from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

TASKS = {
    "preview": "imuru_pl.tasks.preview",
    "train_vae": "imuru_pl.tasks.train_vae",
    "train": "imuru_pl.tasks.train",
    "generate": "imuru_pl.tasks.generate",
    "evaluate": "imuru_pl.tasks.evaluate",
}


def run_task(cfg: DictConfig):
    """Run `cfg.task_name`; a UserError becomes one logged sentence and exit status 2."""
    name = cfg.task_name
    if name not in TASKS:
        log.error("Unknown task %r; choose one of: %s.", name, ", ".join(sorted(TASKS)))
        sys.exit(2)
    try:
        module = importlib.import_module(TASKS[name])
        return module.run(cfg)
    except UserError as err:
        log.error("%s", err)
        sys.exit(2)
