"""Streamed data speed (`python benchmarks/data.py --stream`): what the pre-training loaders deliver.

Four measurements on `experiment=imuru_small`'s data (the synthetic stream: lines up to 1024 px, batch 16),
composed as `run.py` does:

1. render: `StreamRenderer.render(k)` + the sample's tensors in this process, i.e. one loader worker:
   rendered (style, target) pairs per second, CPU and wall.
2. stream loader: the training DataLoader of `data=synthetic_stream` with each `--loader-workers` count:
   pairs per second through `next(iterator)` (wall; the first batch, the workers' start, apart).
3. shard writer: `task=render_shards`' shard job (`write_shard`) in `--shard-processes` processes:
   shards (of `--per-shard` pairs) per minute and pairs per second.
4. shard loader: the training DataLoader of `data=webdataset` over those shards with each workers count:
   pairs per second (PNG decoding, 64 px lines, shuffle buffer).

What a step needs: a step of t seconds at batch B takes B / t pairs per second; the loader keeps up when
workers x (pairs/s per worker) is above that. No GPU step is measured here.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def stream_datamodule(cfg, workers: int):
    from hydra.utils import instantiate

    return instantiate(cfg.data, num_workers=workers)


def measure_render(renderer, count: int) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    kept, widths = 0, []
    for k in range(count):
        pair = renderer.render(k)
        if pair is not None:
            pair.sample()
            kept += 1
            widths.append(pair.target_gray.shape[1])
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"indices": count, "pairs": kept, "cpu_s": cpu, "wall_s": wall, "pairs_per_s_cpu": kept / cpu,
            "pairs_per_s_wall": kept / wall, "mean_target_width_px": statistics.fmean(widths)}


def measure_loader(loader, batches: int) -> dict:
    """Pairs per second through the loader, the first batch (worker start) apart."""
    iterator = iter(loader)
    start = time.perf_counter()
    first = next(iterator)
    first_s, count = time.perf_counter() - start, 0
    start = time.perf_counter()
    for _ in range(batches):
        count += len(next(iterator).texts)
    wall = time.perf_counter() - start
    del iterator
    return {"batches": batches, "batch_size": len(first.texts), "pairs": count, "wall_s": wall,
            "pairs_per_s": count / wall, "first_batch_s": first_s}


def measure_shard_writing(renderer, folder: Path, shards: int, per_shard: int, processes: int) -> dict:
    from imuru_pl.tasks.render_shards import write_shard

    jobs = [(str(folder / f"shard-{j:06d}.tar"), j * per_shard, (j + 1) * per_shard) for j in range(shards)]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=processes) as pool:
        done = list(pool.map(write_shard, [renderer] * len(jobs), *zip(*jobs)))
    wall = time.perf_counter() - start
    pairs = sum(d["samples"] for d in done)
    size = sum(Path(j[0]).stat().st_size for j in jobs)
    return {"shards": shards, "per_shard": per_shard, "processes": processes, "pairs": pairs, "wall_s": wall,
            "shards_per_min": shards / wall * 60, "pairs_per_s": pairs / wall,
            "mean_pair_kb": size / max(pairs, 1) / 1024}


def run(cfg, args) -> dict:
    batch_size = int(cfg.data.batch_size)
    datamodule = stream_datamodule(cfg, 0)
    renderer = datamodule.renderer
    render = measure_render(renderer, args.render_pairs)
    stream = {}
    for workers in args.loader_workers:
        module = stream_datamodule(cfg, workers)
        module.setup("fit")
        stream[str(workers)] = measure_loader(module.train_dataloader(), args.loader_batches)
    with tempfile.TemporaryDirectory() as folder:
        writing = measure_shard_writing(renderer, Path(folder), args.shards, args.per_shard, args.shard_processes)
        from imuru_pl.data.shards import ShardDataModule

        shards = {}
        urls = sorted(str(p) for p in Path(folder).glob("shard-*.tar"))
        for workers in args.loader_workers:
            module = ShardDataModule(urls=urls, val_urls=urls[0], batch_size=batch_size, num_workers=workers,
                                     max_width=cfg.data.max_width, samples_per_epoch=10**6, val_samples=4)
            shards[str(workers)] = measure_loader(module.train_dataloader(), args.loader_batches)
    return {"batch_size": batch_size, "max_width": cfg.data.max_width, "render": render,
            "stream_loader": stream, "shard_writer": writing, "shard_loader": shards}


def report(figures: dict) -> list[str]:
    r, w = figures["render"], figures["shard_writer"]
    lines = [
        f"stream data: batch {figures['batch_size']}, lines up to {figures['max_width']} px",
        (f"render (one worker): {r['pairs']} pairs in {r['wall_s']:.1f} s = {r['pairs_per_s_wall']:.1f} pairs/s "
         f"wall, {r['pairs_per_s_cpu']:.1f} pairs/s CPU; mean target width {r['mean_target_width_px']:.0f} px"),
        (f"shard writer: {w['shards']} shards of {w['per_shard']} in {w['processes']} processes: "
         f"{w['shards_per_min']:.1f} shards/min, {w['pairs_per_s']:.1f} pairs/s, {w['mean_pair_kb']:.0f} KB a pair"),
        f"{'loader':>8} {'workers':>7} {'pairs/s':>8} {'first batch s':>13}",
    ]
    for name in ("stream_loader", "shard_loader"):
        for workers, m in figures[name].items():
            lines.append(f"{name.split('_')[0]:>8} {workers:>7} {m['pairs_per_s']:8.1f} {m['first_batch_s']:13.2f}")
    per_worker = r["pairs_per_s_wall"]
    for step_s in (0.1, 0.2, 0.5):
        need = 32 / step_s
        lines.append(f"a step of {step_s} s at batch 32 needs {need:.0f} pairs/s: {need / per_worker:.1f} "
                     "rendering workers at this rate")
    return lines
