"""`python run.py task=vae_cer vae_dir=<vae> [lines=128] [split=test|val] [key=value ...]`: the reconstruction
CER of a saved line VAE on held-out writers (its legibility floor; docs/legibility.md).

Reads `lines` target lines of the split's writers of the configured data (`data`, the synthetic writers by
default) before and after the VAE round trip with the configured OCR engine (`metrics.ocr`) and reports both
CERs and their difference, overall and per font family (per writer for real data), in
`<output_dir>/vae_cer.json`. Other `key=value` arguments change the data or metrics config, e.g.
`data.lines_per_writer.test=32`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from imuru_pl.errors import UserError
from imuru_pl.metrics.reconstruction import reconstruction_cer
from imuru_pl.metrics.report import save_report
from imuru_pl.models.vae import LineVAE
from imuru_pl.tasks.common import artefact_dir

log = logging.getLogger(__name__)

REPORT_FILE = "vae_cer.json"
SPLITS = ("val", "test")


def run(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("vae_dir"):
        raise UserError("task=vae_cer needs vae_dir=<a saved line VAE directory> (e.g. <run>/vae or "
                        "<run>/model/vae).")
    lines, split = cfg.get("lines", 128), str(cfg.get("split", "test"))
    if isinstance(lines, bool) or not isinstance(lines, int) or lines < 1:
        raise UserError(f"lines is the number of held-out lines to read, a whole number of at least 1, not "
                        f"{lines!r}.")
    if split not in SPLITS:
        raise UserError(f"split is val or test (the held-out writers), not {split!r}.")
    vae_dir = str(artefact_dir(cfg.vae_dir))
    vae = LineVAE.from_pretrained(vae_dir).eval().to(cfg.get("device") or "cpu")
    datamodule = instantiate(cfg.data)
    datamodule.setup("test" if split == "test" else "validate")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    family = {w.id: getattr(w, "font", w.id) for w in datamodule.writers(split)}
    started = time.time()
    result = reconstruction_cer(vae, loader, lines, cfg.metrics, group=lambda w: family.get(w, w))
    result["seconds"] = round(time.time() - started, 1)
    log.info("%d %s lines: CER original %.4f, reconstruction %.4f, difference %+.4f", result["lines"], split,
             result["cer_original"], result["cer_reconstruction"], result["delta_cer"])
    for name, scores in result["per_group"].items():
        log.info("  %s: %d lines, CER original %.4f, reconstruction %.4f", name, scores["lines"],
                 scores["cer_original"], scores["cer_reconstruction"])
    report = {"vae_dir": vae_dir, "split": split, **result}
    path = save_report(report, Path(cfg.paths.output_dir) / REPORT_FILE)
    log.info("Report saved to %s", path)
    return report
