"""The `metrics` config group as a checked, hashable value (so built components can be cached by it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imuru_pl.errors import UserError
from imuru_pl.metrics.ocr import BACKENDS


@dataclass(frozen=True)
class MetricsSettings:
    device: str = "cpu"
    seed: int = 0
    hwd_backbone: str | None = None
    hwd_seed: int = 0
    fid_enabled: bool = True
    fid_size: int = 32
    inception_weights: str | None = None
    fid_binarized: bool = True
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    ocr_enabled: bool = True
    ocr_backend: str = "rapidocr"
    ocr_height: int = 64
    trocr_dir: str | None = None
    tesseract_lang: str = "eng"
    ocr_batch_size: int = 8
    ocr_max_new_tokens: int = 64
    save_predictions: bool = True


# config key (dotted, inside `metrics`) -> field
_FIELDS = {
    "device": "device",
    "seed": "seed",
    "hwd.backbone": "hwd_backbone",
    "hwd.seed": "hwd_seed",
    "fid.enabled": "fid_enabled",
    "fid.size": "fid_size",
    "fid.inception_weights": "inception_weights",
    "fid.binarized": "fid_binarized",
    "fid.kid_subsets": "kid_subsets",
    "fid.kid_subset_size": "kid_subset_size",
    "ocr.enabled": "ocr_enabled",
    "ocr.backend": "ocr_backend",
    "ocr.height": "ocr_height",
    "ocr.trocr_dir": "trocr_dir",
    "ocr.tesseract_lang": "tesseract_lang",
    "ocr.batch_size": "ocr_batch_size",
    "ocr.max_new_tokens": "ocr_max_new_tokens",
    "ocr.save_predictions": "save_predictions",
}
_POSITIVE = {
    "fid_size",
    "kid_subsets",
    "kid_subset_size",
    "ocr_height",
    "ocr_batch_size",
    "ocr_max_new_tokens",
}


_MISSING = object()


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def settings_from_config(cfg: DictConfig | Mapping[str, Any] | MetricsSettings | None) -> MetricsSettings:
    """Accepts the `metrics` node (or the whole run config holding one); unset keys keep their defaults."""
    if cfg is None:
        return MetricsSettings()
    if isinstance(cfg, MetricsSettings):
        return cfg
    if "metrics" in cfg and isinstance(cfg["metrics"], Mapping):
        cfg = cfg["metrics"]  # the run config: resolve only its metrics node
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    defaults = MetricsSettings()
    values: dict[str, Any] = {}
    for key, field in _FIELDS.items():
        value = _lookup(tree, key)
        if value is _MISSING:
            continue
        expected = type(getattr(defaults, field)) if getattr(defaults, field) is not None else str
        if value is None and getattr(defaults, field) is None:
            values[field] = None
            continue
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"metrics.{key} must be an integer, got {value!r}.")
        if expected is bool and not isinstance(value, bool):
            raise UserError(f"metrics.{key} must be true or false, got {value!r}.")
        if expected is str and not isinstance(value, str):
            raise UserError(f"metrics.{key} must be a string, got {value!r}.")
        if field in _POSITIVE and value < 1:
            raise UserError(f"metrics.{key} must be at least 1, got {value!r}.")
        values[field] = value
    settings = MetricsSettings(**values)
    if settings.ocr_backend not in BACKENDS:
        raise UserError(f"metrics.ocr.backend={settings.ocr_backend!r} is not one of {', '.join(BACKENDS)}.")
    if not (settings.device == "cpu" or settings.device.startswith("cuda")):
        raise UserError(f"metrics.device must be cpu, cuda or cuda:N, got {settings.device!r}.")
    return settings
