"""Render the synthetic stream into WebDataset shards in the font-square layout (`task=render_shards`).

    python run.py task=render_shards data=synthetic_stream out=shards/pretrain shards.samples=1000000

Shard j (`<out>/<prefix>-<j:06d>.tar`) holds the kept samples of stream indices `start + j * per_shard` up
to the next shard's first, each sample with the keys font-square's pre-training shards have:
`style.rgb.png` (the style line on the writer's paper, RGB), `gen.bw.png` (the target line clean, gray) and
`json` (`gen_text`, `style_text`, `writer_id` an integer: the sample's stream index, each sample its own
writer, plus `writer` and `font` names), and `gen.rgb.png` (the target on paper, for the VAE stage's
same-line pairs). The stream is `data=synthetic_stream`'s (fonts, held-out families, styles, max_width), so
the shards are exactly the samples that config streams, and stay free of the validation and test families.

Shards are rendered by `shards.processes` processes, one shard per job; each is written as `<name>.partial`
and renamed when complete, so an interrupted run leaves no half shard under a final name; shards already
there (from an interrupted run of the same settings) are kept. `<out>/manifest.json` (written last) holds
the counts, the fonts, the seed and the settings.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm import tqdm

from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PLAN = "render_plan.json"  # the settings, written first: an interrupted run of the same ones goes on
STREAM_TARGET = "imuru_pl.data.stream.StreamDataModule"
SYNTHETIC_TARGET = "imuru_pl.data.datamodule.LineDataModule"


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB" if array.ndim == 3 else "L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def shard_sample(pair) -> dict:
    """A rendered stream pair in the font-square layout (bytes per key, as `webdataset.TarWriter` takes)."""
    meta = {"gen_text": pair.text, "style_text": pair.style_text, "writer_id": int(pair.index),
            "writer": pair.writer, "font": pair.font}
    return {"__key__": f"{pair.index:012d}", "style.rgb.png": png(pair.style_rgb),
            "gen.bw.png": png(pair.target_gray), "gen.rgb.png": png(pair.target_rgb),
            "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")}


def write_shard(renderer, path: str, first: int, last: int) -> dict:
    """Render stream indices [first, last) into one tar shard; its counts."""
    import webdataset as wds

    from imuru_pl.data.streaming import SkipCounts
    from imuru_pl.data.stream_renderer import SKIP_REASONS

    counts, kept, fonts = SkipCounts(SKIP_REASONS), 0, set()
    partial = f"{path}.partial"
    with open(partial, "wb") as stream:
        writer = wds.TarWriter(stream, encoder=False, mtime=0.0)
        for k in range(first, last):
            pair = renderer.render(k, counts)
            if pair is None:
                continue
            writer.write(shard_sample(pair))
            kept, fonts = kept + 1, fonts | {pair.font}
        writer.close()
    shard = {"name": Path(path).name, "first_index": first, "last_index": last - 1, "samples": kept,
             "skipped": counts.totals(), "fonts": sorted(fonts)}
    os.replace(partial, path)
    progress_file(path).write_text(json.dumps(shard) + "\n")  # its counts, for a run that goes on later
    return shard


def progress_file(shard: str) -> Path:
    """Where a finished shard's counts are kept (`<out>/.progress/<name>.json`, beside no shard pattern)."""
    folder = Path(shard).parent / ".progress"
    folder.mkdir(exist_ok=True)
    return folder / f"{Path(shard).name}.json"


def existing_shards(out: Path, jobs: list) -> dict[str, dict]:
    """The shards of `jobs` an interrupted run completed (their counts, from their `.json` side files)."""
    found = {}
    for path, _, _ in jobs:
        side = progress_file(path)
        if Path(path).is_file() and side.is_file():
            found[path] = json.loads(side.read_text())
    return found


def settings(cfg: DictConfig) -> dict:
    shards = cfg.get("shards") or {}
    values = {"samples": shards.get("samples", 10000), "per_shard": shards.get("per_shard", 1000),
              "start": shards.get("start", 0), "processes": shards.get("processes", 0)}
    try:
        values = {k: int(v) for k, v in values.items()}
    except (TypeError, ValueError):
        raise UserError(f"shards.samples, per_shard, start and processes must be whole numbers; got {values}.") from None
    if values["samples"] < 1 or values["per_shard"] < 1 or values["start"] < 0 or values["processes"] < 0:
        raise UserError("shards.samples and shards.per_shard must be at least 1, shards.start and "
                        f"shards.processes 0 or more; got {values}.")
    prefix = str(shards.get("prefix", "shard"))
    if not prefix or "/" in prefix or "." in prefix:
        raise UserError(f"shards.prefix names the shard files and may not hold '/' or '.'; got {prefix!r}.")
    values["prefix"] = prefix
    return values


def stream_datamodule(cfg: DictConfig):
    """The stream of `data=synthetic_stream` (or of `data=synthetic`'s keys, with the stream's defaults)."""
    target = str(cfg.data.get("_target_"))
    if target not in (STREAM_TARGET, SYNTHETIC_TARGET):
        raise UserError("task=render_shards renders the synthetic stream: use data=synthetic_stream.")
    return instantiate(cfg.data, _target_=STREAM_TARGET, latent_cache=False,
                       curriculum={"steps": 0, "start": 1.0}, bucket_batches=0)


def run(cfg: DictConfig) -> dict:
    if not cfg.get("out"):
        raise UserError("task=render_shards needs out=<folder> for the shards.")
    out = Path(to_absolute_path(str(Path(str(cfg.out)).expanduser())))
    plan = settings(cfg)
    if (out / MANIFEST).exists():
        raise UserError(f"{out} already holds a finished set of shards ({MANIFEST}); choose another out=.")
    if out.exists() and not out.is_dir():
        raise UserError(f"out={out} is a file, not a folder.")
    datamodule = stream_datamodule(cfg)
    renderer = datamodule.renderer
    data = OmegaConf.to_container(cfg.data, resolve=True)
    wanted = {"seed": int(cfg.seed), **plan, "processes": None, "data": data}
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / PLAN
    if plan_file.exists() and json.loads(plan_file.read_text()) != json.loads(json.dumps(wanted)):
        raise UserError(f"{out} holds shards of other settings ({PLAN} differs); choose another out=.")
    plan_file.write_text(json.dumps(wanted, indent=1, ensure_ascii=False) + "\n")
    count = math.ceil(plan["samples"] / plan["per_shard"])
    jobs = []
    for j in range(count):
        first = plan["start"] + j * plan["per_shard"]
        last = min(first + plan["per_shard"], plan["start"] + plan["samples"])
        jobs.append((str(out / f"{plan['prefix']}-{j:06d}.tar"), first, last))
    processes = plan["processes"] or len(os.sched_getaffinity(0))
    processes = max(1, min(processes, len(jobs)))
    log.info("Rendering %d samples into %d shards in %s with %d processes.", plan["samples"], count, out,
             processes)
    started, done = time.time(), []
    finished = existing_shards(out, jobs)
    if finished:
        log.info("Keeping %d shards an earlier run of the same settings finished.", len(finished))
    with ProcessPoolExecutor(max_workers=processes) as pool:
        futures = {job[0]: pool.submit(write_shard, renderer, *job) for job in jobs if job[0] not in finished}
        for path, future in tqdm(futures.items(), desc="Shards", unit="shard"):
            finished[path] = future.result()
    done = [finished[job[0]] for job in jobs]
    minutes = (time.time() - started) / 60
    skipped: dict[str, int] = {}
    for shard in done:
        for reason, value in shard["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + value
    kept = sum(shard["samples"] for shard in done)
    manifest = {
        "layout": "font-square (style.rgb.png, gen.bw.png, json: gen_text, style_text, writer_id) + gen.rgb.png",
        "seed": int(cfg.seed), "samples": kept, "indices": [plan["start"], plan["start"] + plan["samples"] - 1],
        "skipped": skipped, "shards": done,
        "fonts": sorted({font for shard in done for font in shard["fonts"]}),
        "held_out_families": sorted(renderer.held_out), "minutes": round(minutes, 3),
        "data": data,
    }
    partial = out / f"{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    os.replace(partial, out / MANIFEST)
    log.info("Wrote %d samples in %d shards (%.1f shards/min); skipped %s. Manifest: %s", kept, count,
             count / max(minutes, 1e-9), skipped, out / MANIFEST)
    return {"out": str(out), "shards": count, "samples": kept, "skipped": skipped, "minutes": round(minutes, 3)}
