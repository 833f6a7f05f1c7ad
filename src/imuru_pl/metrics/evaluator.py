"""The library entry points: score a generated set against a real one (items or HWD-layout folders).

Heavy components (VGG16, OCR engine, Inception) are built once per process and reused, because training-time
evaluation calls this every few epochs.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import DictConfig

from imuru_pl.errors import UserError
from imuru_pl.metrics.binarize import binarize
from imuru_pl.metrics.cer import cer, normalize
from imuru_pl.metrics.fid import InceptionSquareFeatures, SquareFeatures, VggSquareFeatures, fid_kid
from imuru_pl.metrics.folders import read_folder
from imuru_pl.metrics.hwd import check_same_writers, hwd
from imuru_pl.metrics.items import Item
from imuru_pl.metrics.ocr import OcrBackend, build_ocr
from imuru_pl.metrics.settings import MetricsSettings, settings_from_config
from imuru_pl.metrics.vgg import Backbone, load_backbone

log = logging.getLogger(__name__)

Config = DictConfig | Mapping[str, Any] | MetricsSettings | None


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"metrics.device={device} but no CUDA device is available; use metrics.device=cpu.")


@functools.lru_cache(maxsize=4)
def get_backbone(weights: str | None, seed: int, device: str) -> Backbone:
    """The HWD VGG16, built once per (weights, seed, device)."""
    _check_device(device)
    backbone = load_backbone(weights, seed)
    backbone.model.to(device)
    return backbone


@functools.lru_cache(maxsize=2)
def _inception(weights: str, size: int, device: str) -> InceptionSquareFeatures:
    _check_device(device)
    return InceptionSquareFeatures(weights, size, device)


def get_square_features(settings: MetricsSettings) -> SquareFeatures:
    """FID/KID feature extractor: Inception when its weights are given, else the (cached) HWD backbone."""
    if settings.inception_weights:
        return _inception(settings.inception_weights, settings.fid_size, settings.device)
    backbone = get_backbone(settings.hwd_backbone, settings.hwd_seed, settings.device)
    return VggSquareFeatures(backbone.model, backbone.description, settings.fid_size, settings.device)


@functools.lru_cache(maxsize=2)
def _ocr(backend: str, height: int, trocr_dir: str | None, lang: str, device: str, batch: int, tokens: int):
    return build_ocr(backend, height, trocr_dir, lang, device, batch, tokens)


def get_ocr(settings: MetricsSettings) -> OcrBackend:
    """The OCR engine named by metrics.ocr.backend, built once per process for the same ocr settings."""
    s = settings
    return _ocr(
        s.ocr_backend,
        s.ocr_height,
        s.trocr_dir,
        s.tesseract_lang,
        s.device,
        s.ocr_batch_size,
        s.ocr_max_new_tokens,
    )


def _feature_metrics(fake: Sequence[Item], real: Sequence[Item], s: MetricsSettings) -> dict[str, Any]:
    extractor = get_square_features(s)
    out: dict[str, Any] = {"fid_features": extractor.description}
    variants = [("", lambda im: im)] + ([("b", binarize)] if s.fid_binarized else [])
    for prefix, transform in variants:
        fake_f = extractor([transform(i.image) for i in fake])
        real_f = extractor([transform(i.image) for i in real])
        values = fid_kid(fake_f, real_f, s.kid_subsets, s.kid_subset_size, s.seed)
        out[f"{prefix}fid"] = values["fid"]
        for key in ("kid", "kid_std"):  # KID is reported x 10^3, as in the papers
            out[f"{prefix}{key}_x1e3"] = None if values[key] is None else values[key] * 1e3
    return out


def _cer_or_none(preds: list[str], refs: list[str], ignore_case: bool) -> float | None:
    if not any(normalize(r) for r in refs):
        return None
    return cer(preds, refs, ignore_case)


def _ocr_metrics(fake: Sequence[Item], real: Sequence[Item], s: MetricsSettings) -> dict[str, Any]:
    backend = get_ocr(s)
    reads = {"fake": backend.read([i.image for i in fake]), "real": backend.read([i.image for i in real])}
    sets = {"fake": fake, "real": real}
    out: dict[str, Any] = {"ocr": backend.description}
    for suffix, ignore_case in (("", False), ("_nocase", True)):
        for name in ("fake", "real"):
            out[f"cer_{name}{suffix}"] = _cer_or_none(reads[name], [i.text for i in sets[name]], ignore_case)
        both = out[f"cer_fake{suffix}"] is not None and out[f"cer_real{suffix}"] is not None
        out[f"delta_cer{suffix}"] = out[f"cer_fake{suffix}"] - out[f"cer_real{suffix}"] if both else None
    if out["cer_fake"] is None or out["cer_real"] is None:
        log.warning("A set has no reference text: its CER is left empty.")
    if s.save_predictions:
        out["ocr_predictions"] = {
            name: [
                {"writer": i.writer, "name": i.name, "text": i.text, "read": r}
                for i, r in zip(sets[name], reads[name], strict=True)
            ]
            for name in ("fake", "real")
        }
    return out


def evaluate_sets(fake: Sequence[Item], real: Sequence[Item], cfg: Config = None) -> dict[str, Any]:
    """Score generated lines against real lines of the same writers.

    `cfg` is the `metrics` config node (the whole run config, a plain dict or None work too). Returns a
    JSON-ready dict: hwd, fid, kid_x1e3, bfid, bkid_x1e3, cer_fake, cer_real, delta_cer (+ `_nocase`
    variants), the line counts, and descriptions of the backbone, FID features and OCR engine used.
    """
    settings = settings_from_config(cfg)
    if not fake or not real:
        raise UserError(f"Nothing to evaluate: {len(fake)} generated and {len(real)} real lines.")
    check_same_writers({i.writer for i in fake}, {i.writer for i in real})
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    backbone = get_backbone(settings.hwd_backbone, settings.hwd_seed, settings.device)
    value, per_writer = hwd(backbone.model, fake, real, settings.device)
    seconds["hwd"] = time.perf_counter() - start
    report: dict[str, Any] = {
        "hwd": value,
        "n_fake": len(fake),
        "n_real": len(real),
        "n_writers": len(per_writer),
        "backbone": backbone.description,
    }
    if settings.fid_enabled:
        t = time.perf_counter()
        report.update(_feature_metrics(fake, real, settings))
        seconds["fid"] = time.perf_counter() - t
    if settings.ocr_enabled:
        t = time.perf_counter()
        report.update(_ocr_metrics(fake, real, settings))
        seconds["ocr"] = time.perf_counter() - t
    report["hwd_per_writer"] = per_writer
    seconds["total"] = time.perf_counter() - start
    report["seconds"] = seconds
    log.info(
        "Evaluated %d generated vs %d real lines of %d writers in %.1f s",
        len(fake),
        len(real),
        len(per_writer),
        seconds["total"],
    )
    return report


def evaluate_folders(
    fake_dir: str | os.PathLike, real_dir: str | os.PathLike, cfg: Config = None
) -> dict[str, Any]:
    """`evaluate_sets` on two HWD-layout folders; the report also names the folders."""
    fake, real = read_folder(fake_dir), read_folder(real_dir)
    report = evaluate_sets(fake, real, cfg)
    return {"fake_dir": os.fspath(fake_dir), "real_dir": os.fspath(real_dir), **report}
