"""Tasks that run.py dispatches to. Each module exposes `run(cfg) -> dict | None`."""

import importlib
import logging
import sys

from omegaconf import DictConfig

from imuru_pl import console
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

TASKS = {
    "preview": "imuru_pl.tasks.preview",
    "train_vae": "imuru_pl.tasks.train_vae",
    "train": "imuru_pl.tasks.train",
    "generate": "imuru_pl.tasks.generate",
    "evaluate": "imuru_pl.tasks.evaluate",
    "heldout": "imuru_pl.tasks.heldout",
    "vae_cer": "imuru_pl.tasks.vae_cer",
    "render_shards": "imuru_pl.tasks.render_shards",
    "benchmark": "imuru_pl.tasks.benchmark",
    "synthetic_set": "imuru_pl.tasks.synthetic_set",
    "bundle": "imuru_pl.tasks.bundle",
}
TRAINING_TASKS = ("train", "train_vae")
# Strategies whose launcher re-runs the command line in new processes: inside a sweep each child would
# replay the whole sweep.
RELAUNCHING_STRATEGIES = ("ddp", "fsdp", "ddp_find_unused_parameters_true",
                          "ddp_find_unused_parameters_false", "deepspeed")


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _strategy_name(trainer: DictConfig) -> str:
    """`ddp`, `fsdp`, ... whether the strategy is given by name or as a `_target_` class."""
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, DictConfig):
        name = str(strategy.get("_target_", "")).rsplit(".", 1)[-1]
        return name.lower().removesuffix("strategy") or "auto"
    return str(strategy)


def _check_sweep_strategy(cfg: DictConfig) -> None:
    trainer = cfg.get("trainer") or DictConfig({})
    strategy = _strategy_name(trainer)
    single = str(trainer.get("devices", 1)) == "1" and str(trainer.get("num_nodes", 1)) == "1"
    if not single and (strategy in RELAUNCHING_STRATEGIES or strategy.startswith("deepspeed")):
        raise UserError(f"A sweep (-m) runs its jobs one after another in one process, and "
                        f"trainer.strategy={strategy} would re-launch the whole sweep in every rank; "
                        "sweep with one device per job, or use trainer.strategy=ddp_spawn.")


def _check_accelerator(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without CUDA: say so before anything is built."""
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "cpu"))
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"trainer.accelerator={accelerator} needs a CUDA GPU and none is visible; use "
                            "trainer=cpu, or trainer=ddp trainer.accelerator=cpu for several CPU processes.")


def user_error(err: BaseException) -> UserError | None:
    """The UserError behind `err`, also when a wrapper raised it (Hydra's instantiate wraps constructors')."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def run_task(cfg: DictConfig):
    """Run `cfg.task_name`; a UserError becomes one logged sentence and exit status 2.

    Inside a sweep the error is logged and raised instead, so Hydra records the job as failed and goes on
    with the next one (run.py reports it in one line once the sweep is over).
    """
    name = cfg.task_name
    sweep = _in_sweep()
    try:
        if name not in TASKS:
            raise UserError(f"Unknown task {name!r}; choose one of: {', '.join(sorted(TASKS))}.")
        if sweep:
            _check_sweep_strategy(cfg)
        if name in TRAINING_TASKS:
            _check_accelerator(cfg)
        module = importlib.import_module(TASKS[name])
        with console.task(cfg):  # the config tree first, the output directory last
            return module.run(cfg)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        log.error("%s", cause)
        if sweep:
            raise cause from None
        sys.exit(2)
