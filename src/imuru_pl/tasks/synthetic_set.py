"""`python run.py task=synthetic_set out=<dir> [run_dir=<run> | experiment=<name>]`: the synthetic held-out
(test) writers as a styled-HTG set, so `task=benchmark` scores a CPU experiment by the path it scores IAM by.

For every test writer of the data config (a run's own, with run_dir=, else the composed one), its first
`lines_per_writer` test lines (exactly the lines the test split holds) are saved twice under
`<out>/images/<writer>/`: `<id>.png`, the clean render (the real line a sample is compared with), and
`<id>_paper.png`, the same line on the writer's paper (a style line, as the model's style images are). Each
sample of `<out>/shtg_synthetic_lines.json.gz` writes line k's text in the hand of the writer's other lines
(`style_ids`: the paper renders of lines k+1, k+2, ... whose text differs). `<out>/images/transcriptions.json`
holds every image's text, as the library's own image folders do.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from imuru_pl.console import progress
from imuru_pl.data.image import tensor_to_image
from imuru_pl.data.shtg import ShtgSample, write_set
from imuru_pl.data.transcriptions import TRANSCRIPTIONS
from imuru_pl.errors import UserError
from imuru_pl.tasks.heldout import RUN_CONFIG

log = logging.getLogger(__name__)

SET_FILE = "shtg_synthetic_lines.json.gz"
IMAGES = "images"
MAX_STYLE_IDS = 8


def data_config(cfg: DictConfig) -> DictConfig:
    if not cfg.get("run_dir"):
        return cfg.data
    path = Path(to_absolute_path(str(cfg.run_dir))) / RUN_CONFIG
    if not path.is_file():
        raise UserError(f"{path.parent.parent} holds no {RUN_CONFIG.as_posix()}: give run_dir= a run directory "
                        "written by run.py.")
    run_cfg = OmegaConf.load(path)
    OmegaConf.update(run_cfg, "paths.output_dir", str(Path(cfg.paths.output_dir)), force_add=True)
    return run_cfg.data


def synthetic_samples(datamodule, lines_per_writer: int) -> tuple[list[ShtgSample], dict[str, Any]]:
    """The set's samples and {relative image path: (image, text)} of every line it names."""
    samples, images = [], {}
    for writer in progress(datamodule.writers("test"), desc="Test writers", unit="writer"):
        lines = [datamodule.line(writer, k) for k in range(lines_per_writer)]
        ids = [f"{writer.id}_{k:04d}" for k in range(lines_per_writer)]
        for k, (line, image_id) in enumerate(zip(lines, ids)):
            images[f"{writer.id}/{image_id}.png"] = (tensor_to_image(line.clean), line.text)
            images[f"{writer.id}/{image_id}_paper.png"] = (tensor_to_image(line.styled), line.text)
            others = [(k + j) % len(lines) for j in range(1, len(lines))]
            style_ids = [f"{ids[o]}_paper" for o in others if lines[o].text != line.text][:MAX_STYLE_IDS]
            if style_ids:
                samples.append(ShtgSample(line.text, image_id, f"{writer.id}/{image_id}.png", tuple(style_ids)))
    return samples, images


def run(cfg: DictConfig) -> dict[str, Any]:
    if not cfg.get("out"):
        raise UserError("task=synthetic_set needs out=<a new folder for the set file and its images>.")
    out = Path(to_absolute_path(str(cfg.out)))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"The output folder {out} already exists and is not empty; choose a new folder.")
    data = data_config(cfg)
    datamodule = instantiate(data)
    if not hasattr(datamodule, "line") or not hasattr(datamodule, "writers"):
        raise UserError("task=synthetic_set renders the synthetic test writers: it needs data=synthetic or "
                        "data=synthetic_stream (a real data set has its own set files).")
    count = cfg.get("lines_per_writer") or OmegaConf.select(data, "lines_per_writer.test")
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise UserError(f"lines_per_writer must be a whole number of at least 2 (a line needs another line of "
                        f"its writer as the style), got {count!r}.")
    samples, images = synthetic_samples(datamodule, count)
    if not samples:
        raise UserError("No test line has another line of its writer with a different text to take the style "
                        "from; raise lines_per_writer.")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel, (image, _) in images.items():
            (staging / IMAGES / rel).parent.mkdir(parents=True, exist_ok=True)
            image.save(staging / IMAGES / rel)
        texts = {rel: text for rel, (_, text) in images.items()}
        (staging / IMAGES / TRANSCRIPTIONS).write_text(json.dumps(texts, indent=1, ensure_ascii=False), "utf-8")
        write_set(staging / SET_FILE, samples)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    writers = sorted({s.author for s in samples})
    log.info("Wrote %d samples of %d test writers (%s) to %s; score a model on them with:\n  python run.py "
             "task=benchmark model_dir=<model> set=%s images=%s out=<dir>", len(samples), len(writers),
             ", ".join(writers), out, out / SET_FILE, out / IMAGES)
    return {"set": str(out / SET_FILE), "images": str(out / IMAGES), "samples": len(samples),
            "writers": writers}
