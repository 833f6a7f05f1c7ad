"""Data-pipeline speed: synthetic rendering, per-item composition + collate, and loader waits in training.

Three measurements on the demo's data (`conf/experiment/demo.yaml`, composed as `run.py` does):

1. setup: `LineDataModule.setup("fit")` renders the train and validation splits into ink masks
   (fonts -> uint8 masks); rendered lines per second.
2. compose: `dataset[i]` (style on paper + clean target from the masks, to tensors) and `collate_lines`
   (white padding into a `LineBatch`) in this process; lines per second and milliseconds per batch;
   the same for the VAE stage's same-line pairs (`vae.train.batch_size` lines per batch).
3. wait: the demo's train dataloader feeding real training steps of the demo's module (tiny VAE,
   tiny T5, latent cache on): the loop times `next(iterator)` (the wait) and the optimiser step
   apart; the share is wait / (wait + step). "warm" steps find every image in the latent cache
   (epochs 2 onwards of the demo): the shortest step, so the largest share. "cold" steps encode the
   batch's images first (the first epoch). With several `--workers` values the settings run in
   interleaved blocks (each block replays one shuffled order: once to fill the cache, once timed),
   and the first batch of each block (a fresh worker round or epoch start) is reported apart. With
   workers, their memory (USS / PSS, through psutil where installed) is reported too.

The VAE is freshly initialised: its speed does not depend on its weights.

    OMP_NUM_THREADS=1 python benchmarks/data.py                        # demo settings, ~3 minutes
    OMP_NUM_THREADS=1 python benchmarks/data.py --workers 0 1       # and one loader worker, ~5 minutes
    OMP_NUM_THREADS=1 python benchmarks/data.py --stream            # the streamed data (data_streams.py)

Prints a table and ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import compose_cfg, frozen_vae, set_threads, step_autocast  # the same directory

log = logging.getLogger("benchmarks.data")


def timed(fn, *args):
    """(CPU seconds, wall seconds, result) of one call of fn(*args)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.process_time() - cpu, time.perf_counter() - wall, result


def measure_setup(cfg):
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    cpu, wall, _ = timed(lambda: datamodule.setup("fit"))
    lines = sum(len(datamodule.stores[split]) for split in ("train", "val"))
    return datamodule, {"lines": lines, "cpu_s": cpu, "wall_s": wall, "lines_per_s_cpu": lines / cpu,
                        "lines_per_s_wall": lines / wall,
                        "mean_width_px": float(datamodule.stores["train"].widths().mean())}


def measure_compose(dataset, batch_size: int, batches: int) -> dict:
    from imuru_pl.data.batch import collate_lines

    item_cpu, item_wall, collate_cpu, collate_wall = [], [], [], []
    for b in range(batches):
        indices = [(b * batch_size + k) % len(dataset) for k in range(batch_size)]
        cpu, wall, items = timed(lambda rows: [dataset[i] for i in rows], indices)
        item_cpu.append(cpu)
        item_wall.append(wall)
        cpu, wall, _ = timed(collate_lines, items)
        collate_cpu.append(cpu)
        collate_wall.append(wall)
    items_s, collate_s = statistics.median(item_cpu), statistics.median(collate_cpu)
    return {"batch_size": batch_size, "batches": batches,
            "items_ms_per_batch_cpu": 1000 * items_s, "collate_ms_per_batch_cpu": 1000 * collate_s,
            "batch_ms_cpu": 1000 * (items_s + collate_s),
            "batch_ms_wall": 1000 * (statistics.median(item_wall) + statistics.median(collate_wall)),
            "lines_per_s_cpu": batch_size / (items_s + collate_s)}


class DemoTraining:
    """The demo's module and a loader per worker setting; steps as Lightning's automatic optimisation."""

    def __init__(self, cfg, datamodule):
        import torch

        from imuru_pl.tasks.train import build_module

        self.torch = torch
        self.module = build_module(cfg, frozen_vae(cfg)).train()
        optim = self.module.optim
        self.optimizer = torch.optim.AdamW(self.module.model.parameters(), lr=float(optim["lr"]),
                                           weight_decay=float(optim["weight_decay"]),
                                           betas=tuple(optim["betas"]), eps=float(optim["eps"]))
        self.clip = float(cfg.trainer.get("gradient_clip_val") or 0.0)
        self.precision = str(cfg.trainer.precision)  # the demo's bf16-mixed: the T5 in autocast
        self.datamodule = datamodule
        self.loaders = {}

    def loader(self, workers: int):
        if workers not in self.loaders:
            self.datamodule.num_workers = workers
            self.loaders[workers] = self.datamodule.train_dataloader()
            _, wall, _ = timed(lambda: next(iter(self.loaders[workers])))  # starts persistent workers
            log.info("loader with %d worker(s) started in %.2f s", workers, wall)
        return self.loaders[workers]

    def warm(self, batch) -> None:
        latents = self.module.latents
        latents.posterior(batch.style, batch.style_widths, batch.style_keys)
        latents.posterior(batch.target, batch.target_widths, batch.target_keys)

    def step(self, batch) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with step_autocast(self.precision):
            loss = self.module.model(**self.module._inputs(batch)).loss
        loss.backward()
        if self.clip:  # trainer.gradient_clip_val, as Lightning applies it
            self.torch.nn.utils.clip_grad_norm_(self.module.model.parameters(), self.clip)
        self.optimizer.step()

    def block(self, workers: int, steps: int, seed: int, warm: bool) -> dict:
        """`steps` + 1 training steps fed by the loader; times of next() and of the step, apart."""
        loader = self.loader(workers)
        if warm:  # replay the same shuffled order once, untimed, to fill the cache
            self.torch.manual_seed(seed)
            iterator = iter(loader)
            for _ in range(steps + 1):
                self.warm(next(iterator))
        cached = len(self.module.latents)
        self.torch.manual_seed(seed)
        iterator = iter(loader)
        rows = []
        for _ in range(steps + 1):
            wait_cpu, wait_wall, batch = timed(next, iterator)
            step_cpu, step_wall, _ = timed(self.step, batch)
            rows.append((wait_cpu, wait_wall, step_cpu, step_wall))
        return {"workers": workers, "warm": warm, "seed": seed, "rows": rows,
                "cache_misses": len(self.module.latents) - cached}


def worker_memory_mb() -> list[dict]:
    """Memory of this process's children (the persistent loader workers): unique (USS) and shared-
    proportional (PSS) set sizes; the workers are forked, so most of their pages are the parent's."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for child in psutil.Process().children():
        try:
            info = child.memory_full_info()
        except (psutil.Error, AttributeError):
            continue
        found.append({"pid": child.pid, "uss_mb": info.uss / 2**20, "pss_mb": getattr(info, "pss", 0) / 2**20,
                      "rss_mb": info.rss / 2**20})
    return found


def summarise(blocks: list[dict]) -> dict:
    first = [b["rows"][0] for b in blocks]
    rows = [r for b in blocks for r in b["rows"][1:]]
    wait_wall, step_wall = sum(r[1] for r in rows), sum(r[3] for r in rows)
    med = {name: statistics.median(r[i] for r in rows)
           for i, name in enumerate(("wait_cpu_s", "wait_wall_s", "step_cpu_s", "step_wall_s"))}
    return {"steps": len(rows), "blocks": len(blocks),
            "wait_share": wait_wall / (wait_wall + step_wall),
            "wait_share_of_medians": med["wait_wall_s"] / (med["wait_wall_s"] + med["step_wall_s"]),
            "mean_wait_wall_s": wait_wall / len(rows), "mean_step_wall_s": step_wall / len(rows),
            **{f"median_{k}": v for k, v in med.items()},
            "max_wait_wall_s": max(r[1] for r in rows),
            "first_batch_wait_wall_s": statistics.median(r[1] for r in first),
            "cache_misses": sum(b["cache_misses"] for b in blocks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="data.num_workers settings to compare (default: the demo's)")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks per worker setting (interleaved)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per block (+1 first batch apart)")
    parser.add_argument("--cold-steps", type=int, default=6, help="steps with a cold cache (0 skips)")
    parser.add_argument("--compose-batches", type=int, default=20)
    parser.add_argument("--lines-per-writer", type=int, default=None,
                        help="training lines per writer (default: the demo's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stream", action="store_true",
                        help="measure the streamed data of experiment=imuru_small instead (data_streams.py)")
    parser.add_argument("--render-pairs", type=int, default=200, help="--stream: pairs rendered in this process")
    parser.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2], help="--stream: workers counts")
    parser.add_argument("--loader-batches", type=int, default=20, help="--stream: timed batches per loader")
    parser.add_argument("--shards", type=int, default=8, help="--stream: shards written")
    parser.add_argument("--per-shard", type=int, default=50, help="--stream: pairs per shard")
    parser.add_argument("--shard-processes", type=int, default=2, help="--stream: shard writing processes")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. data.batch_size=16")
    args = parser.parse_args()
    if args.stream:
        return stream_main(args)
    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)

    overrides = list(args.overrides)
    if args.lines_per_writer:
        overrides.append(f"data.lines_per_writer.train={args.lines_per_writer}")
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_cfg(overrides, out)
    workers = args.workers if args.workers is not None else [int(cfg.data.num_workers)]
    batch_size = int(cfg.data.batch_size)

    datamodule, setup = measure_setup(cfg)
    log.info("setup: %d lines in %.1f s", setup["lines"], setup["wall_s"])
    compose = measure_compose(datamodule.train_dataset, batch_size, args.compose_batches)
    log.info("compose: %.1f ms per batch", compose["batch_ms_cpu"])
    # The VAE stage of the demo reads the same lines as same-line pairs, vae.train.batch_size per step.
    from imuru_pl.data.pairs import LinePairs

    vae_pairs = LinePairs(datamodule.stores["train"], datamodule.writers("train"), "same_line",
                          datamodule.seed)
    compose_vae = measure_compose(vae_pairs, int(cfg.vae.train.batch_size), args.compose_batches)

    training = DemoTraining(cfg, datamodule)
    blocks: dict[int, list[dict]] = {w: [] for w in workers}
    for b in range(args.blocks):
        for w in (workers if b % 2 == 0 else workers[::-1]):
            blocks[w].append(training.block(w, args.steps, seed=1000 + b, warm=True))
            log.info("warm block %d, %d worker(s) done", b + 1, w)
    wait = {str(w): summarise(blocks[w]) for w in workers}
    worker_memory = worker_memory_mb()
    cold = None
    if args.cold_steps:
        training.module.latents._cache.clear()  # as at the start of the first epoch
        cold = summarise([training.block(workers[0], args.cold_steps, seed=99, warm=False)])
        cold["workers"] = workers[0]

    lines = [
        f"demo data: batch {batch_size}, {args.threads} thread(s); CPU = this process's CPU time",
        (f"setup (render train + val): {setup['lines']} lines in {setup['wall_s']:.1f} s wall / "
         f"{setup['cpu_s']:.1f} s CPU = {setup['lines_per_s_cpu']:.0f} lines/s (CPU), mean width "
         f"{setup['mean_width_px']:.0f} px"),
        (f"compose + collate: {compose['items_ms_per_batch_cpu']:.1f} + "
         f"{compose['collate_ms_per_batch_cpu']:.1f} ms "
         f"CPU per batch of {batch_size} = {compose['lines_per_s_cpu']:.0f} lines/s"),
        (f"VAE stage (same-line pairs): {compose_vae['batch_ms_cpu']:.1f} ms CPU per batch of "
         f"{compose_vae['batch_size']} = {compose_vae['lines_per_s_cpu']:.0f} lines/s"),
    ]
    header = (f"{'workers':>7} {'cache':>5} {'steps':>5} {'wait share':>10} {'share (med)':>11} "
              f"{'wait ms':>8} {'step s':>7} {'max wait ms':>11} {'1st batch ms':>12} {'misses':>6}")
    lines += ["training steps fed by the demo's train loader (wall clock; wait ms = mean per step)",
              header, "-" * len(header)]
    results = [(w, "warm", wait[str(w)]) for w in workers]
    if cold:
        results.append((cold["workers"], "cold", cold))
    for w, kind, r in results:
        lines.append(f"{w:7d} {kind:>5} {r['steps']:5d} {100 * r['wait_share']:9.2f}% "
                     f"{100 * r['wait_share_of_medians']:10.2f}% {1000 * r['mean_wait_wall_s']:8.1f} "
                     f"{r['mean_step_wall_s']:7.3f} {1000 * r['max_wait_wall_s']:11.1f} "
                     f"{1000 * r['first_batch_wait_wall_s']:12.1f} {r['cache_misses']:6d}")
    if worker_memory:
        lines.append("loader worker processes alive at the end: "
                     + ", ".join(f"USS {m['uss_mb']:.0f} MB / PSS {m['pss_mb']:.0f} MB"
                                 for m in worker_memory))
    print("\n".join(lines))
    print(json.dumps({"device": "cpu", "threads": args.threads, "batch_size": batch_size,
                      "overrides": overrides, "setup": setup, "compose": compose,
                      "compose_vae_stage": compose_vae,
                      "wait": wait, "cold": cold, "worker_memory": worker_memory}))


def stream_main(args) -> None:
    import data_streams

    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_cfg(["experiment=imuru_small", "trainer=cpu", *args.overrides], out)
    figures = data_streams.run(cfg, args)
    print("\n".join(data_streams.report(figures)))
    print(json.dumps({"device": "cpu", "threads": args.threads, "overrides": args.overrides, **figures}))


if __name__ == "__main__":
    main()
