"""`trainer.precision=auto` and `model.attention=auto`: the fastest training step the machine has.

bfloat16 autocast makes a CPU training step cheaper only where the CPU has native bfloat16 matrix kernels
(AVX512-BF16 or AMX, through oneDNN): there the demo's step costs 0.36x of float32. On a CPU without them
(AVX2 only) PyTorch falls back to a plain loop and the same step costs about 20x float32 (docs/benchmarks.md),
so `auto` is bf16-mixed on a GPU and on such a CPU, 32 on any other. Eager attention is the faster T5
attention under CPU bf16, sdpa in float32 and on a GPU, and `model.attention=auto` follows the precision.
Both are resolved in the config when a training task starts (`train`, `train_vae`), before anything is built,
so logs, hparams and exported configs show the choice made.
"""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

AUTO = "auto"
_warned: set[str] = set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (oneDNN's AVX512-BF16 or AMX kernels)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def on_gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == AUTO and torch.cuda.is_available())


def training_precision(precision: str, accelerator: str) -> str:
    """`precision` with `auto` resolved for `accelerator`; a bf16 request on a CPU that would run it ~20x
    slower than float32 is kept (it was asked for) with one warning."""
    gpu = on_gpu(accelerator)
    if precision == AUTO:
        return "bf16-mixed" if gpu or cpu_has_native_bf16() else "32"
    if precision.startswith("bf16") and not gpu and not cpu_has_native_bf16() and precision not in _warned:
        _warned.add(precision)
        log.warning("trainer.precision=%s on a CPU without native bfloat16 kernels (no AVX512-BF16 or AMX): "
                    "a training step is about 20x slower than float32 here; trainer.precision=auto or 32 "
                    "chooses float32.", precision)
    return precision


def attention_for(precision: str, accelerator: str) -> str:
    return "eager" if precision.startswith("bf16") and not on_gpu(accelerator) else "sdpa"


def resolve_auto(cfg: DictConfig) -> DictConfig:
    """`cfg` with `trainer.precision` (and a stage's `vae.trainer.precision`) and `model.attention` resolved in
    place; other values are left as they are."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig) or "precision" not in trainer:
        return cfg
    accelerator = str(trainer.get("accelerator", "cpu"))
    with open_dict(cfg):
        trainer.precision = training_precision(str(trainer.precision), accelerator)
        vae = cfg.get("vae")
        stage = vae.get("trainer") if isinstance(vae, DictConfig) else None
        if isinstance(stage, DictConfig) and "precision" in stage:
            stage.precision = training_precision(str(stage.precision), str(stage.get("accelerator", accelerator)))
        model = cfg.get("model")
        if isinstance(model, DictConfig) and model.get("attention") == AUTO:
            model.attention = attention_for(str(trainer.precision), accelerator)
    return cfg
