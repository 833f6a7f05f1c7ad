"""Training-step speed: the latent cache (warm) against re-encoding style and target with the VAE.

One optimiser step of `ImuruModule` = `_inputs` (the latents of a batch: cached posterior + sampling,
or the frozen VAE's encoder on both images) + the Imuru forward + backward + gradient clipping + AdamW,
timed apart as "latents" and "T5 part". The presets are
built from the project's configs (`conf/experiment/demo.yaml` composed with `vae=...` and
`model/t5=...`), the batches come from the synthetic data module's train loader:

    tiny   vae=tiny      model/t5=tiny    (the CPU demo)
    small  vae=reference model/t5=small   (reference VAE, t5-small dimensions)

The VAE is freshly initialised (its speed does not depend on its weights); its padding latent is
measured on white images, which is all the latent path needs. Both variants run the same batches
in the same process, interleaved (A B, B A, ...), and the table keeps medians. "Warm" means every
image of the timed batches is already in the cache (as from the demo's second epoch on).

Peak memory is the peak resident set size (VmHWM in /proc/self/status, reset through
/proc/self/clear_refs right before the timed steps; `resource.getrusage` where that is not
available) of a fresh process that runs one variant only; `tracemalloc` does not see torch's
allocations. The cache's own size is the bytes of the tensors it holds.

    OMP_NUM_THREADS=1 python benchmarks/training.py                    # both presets, ~7 minutes
    OMP_NUM_THREADS=1 python benchmarks/training.py --presets tiny --steps 20 --no-memory
    OMP_NUM_THREADS=1 python benchmarks/training.py --presets tiny vae.arch.block_out_channels=[16,32,64,128]
    OMP_NUM_THREADS=1 python benchmarks/training.py --presets tiny trainer.precision=32 model.attention=sdpa

The step runs in the composed `trainer.precision` (the demo's bf16-mixed): `_inputs` and the forward under
`torch.autocast(bfloat16)`, as Lightning runs `training_step`, the backward outside it; the frozen VAE
encodes in float32 either way (`LatentEncoder._encode_each`).

Prints a table and ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"tiny": ("tiny", "tiny"), "small": ("reference", "small")}  # name -> (vae, model/t5)
VARIANTS = ("cache", "encode")

log = logging.getLogger("benchmarks.training")


def set_threads(threads: int) -> None:
    """One thread unless told otherwise (also for the memory-probe processes, through the environment)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)


def compose_cfg(overrides: list[str], output_dir: str):
    """The config `run.py <overrides>` builds (demo experiment), with an explicit output directory."""
    from hydra import compose, initialize_config_dir

    os.environ.setdefault("IMURU_PL_ROOT", str(ROOT))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=[*overrides, f"paths.output_dir={output_dir}"])
    from imuru_pl.precision import resolve_auto

    return resolve_auto(cfg)  # trainer.precision=auto, model.attention=auto as run.py resolves them


def frozen_vae(cfg):
    """A freshly initialised VAE of `cfg.vae.arch`, frozen, with the one constant the latent path reads
    (the padding latent, here the mean column of a white line)."""
    from imuru_pl.data.batch import LINE_HEIGHT
    from imuru_pl.tasks.train_vae import build_vae

    vae = build_vae(cfg)
    with torch.no_grad():
        white = torch.ones(1, vae.in_channels, LINE_HEIGHT, 256)
        vae.padding_latent = vae.encode_posterior(white)[0][0].mean(dim=0)
    return vae.freeze()


def step_autocast(precision: str):
    """What Lightning's `trainer.precision` wraps `training_step` in on CPU (the backward runs outside)."""
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision in ("32", "32-true"):
        return contextlib.nullcontext()
    raise SystemExit(f"The benchmarks run trainer.precision 32 or bf16-mixed on CPU, not {precision}.")


class Setup:
    """Everything one preset needs: config, frozen VAE, a module per variant, fixed real batches."""

    def __init__(self, preset: str, batch_size: int, lines_per_writer: int, num_batches: int,
                 variants: tuple[str, ...], output_dir: str, overrides: tuple[str, ...] | list[str] = (),
                 seed: int = 0):
        from hydra.utils import instantiate

        from imuru_pl.tasks.train import build_module

        vae_name, t5_name = PRESETS[preset]
        self.cfg = compose_cfg([f"vae={vae_name}", f"model/t5={t5_name}", f"data.batch_size={batch_size}",
                                f"data.lines_per_writer.train={lines_per_writer}", *overrides], output_dir)
        torch.manual_seed(seed)
        vae = frozen_vae(self.cfg)
        datamodule = instantiate(self.cfg.data)
        datamodule.setup("fit")
        torch.manual_seed(seed)  # fixes the shuffled order
        loader, self.batches = datamodule.train_dataloader(), []
        while len(self.batches) < num_batches:
            self.batches.extend(batch for batch, _ in zip(loader, range(num_batches - len(self.batches))))
        base = instantiate(self.cfg.model, _convert_="all")
        self.modules, self.optimizers = {}, {}
        for variant in variants:
            self.cfg.data.latent_cache = variant == "cache"
            module = build_module(self.cfg, vae, copy.deepcopy(base)).train()
            optim = module.optim
            self.optimizers[variant] = torch.optim.AdamW(
                module.model.parameters(), lr=float(optim["lr"]), weight_decay=float(optim["weight_decay"]),
                betas=tuple(optim["betas"]), eps=float(optim["eps"]))
            self.modules[variant] = module
        self.clip = float(self.cfg.trainer.get("gradient_clip_val") or 0.0)
        self.precision = str(self.cfg.trainer.precision)
        self.t5_parameters = base.num_parameters()
        self.vae_parameters = sum(p.numel() for p in vae.parameters())

    def warm_cache(self) -> None:
        """Encode every timed image once, as the first epoch of the demo does."""
        module = self.modules.get("cache")
        if module is None:
            return
        for batch in self.batches:
            module.latents.posterior(batch.style, batch.style_widths, batch.style_keys)
            module.latents.posterior(batch.target, batch.target_widths, batch.target_keys)

    def cache_bytes(self) -> int:
        module = self.modules.get("cache")
        if module is None:
            return 0
        return sum(m.nbytes + s.nbytes for m, s in module.latents._cache.values())

    def step(self, variant: str, batch) -> tuple[float, float, float, float]:
        """One optimiser step as `ImuruModule.training_step` + Lightning's automatic optimisation run it;
        returns (CPU s, wall s, CPU s of the latents alone, loss)."""
        module, optimizer = self.modules[variant], self.optimizers[variant]
        wall, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with step_autocast(self.precision):
            inputs = module._inputs(batch)  # latents: cache look-up + sampling, or the VAE encoder
            latents_cpu = time.process_time() - cpu
            loss = module.model(**inputs).loss
        loss.backward()
        if self.clip:  # trainer.gradient_clip_val, as Lightning applies it
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), self.clip)
        optimizer.step()
        return time.process_time() - cpu, time.perf_counter() - wall, latents_cpu, float(loss.detach())


# -- peak memory --------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb(reset_worked: bool) -> tuple[float, str]:
    if reset_worked:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM after reset"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024, "ru_maxrss (process lifetime)"


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_probe(args) -> dict:
    """Run in a fresh process: build one preset for one variant, warm, reset the peak, run steps."""
    preset, variant = args.memory_probe.split(":")
    with tempfile.TemporaryDirectory() as out:
        setup = Setup(preset, args.batch_size, args.lines_per_writer, args.probe_steps + 1, (variant,), out,
                      args.overrides)
        setup.warm_cache()
        setup.step(variant, setup.batches[0])  # allocator warm-up, AdamW state
        before = current_rss_mb()
        reset = reset_peak_rss()
        for batch in setup.batches[1:]:
            setup.step(variant, batch)
        peak, how = peak_rss_mb(reset)
    return {"preset": preset, "variant": variant, "rss_before_mb": before, "peak_rss_mb": peak,
            "step_rise_mb": peak - before, "how": how, "cache_mb": setup.cache_bytes() / 2**20}


def probe_in_subprocess(args, preset: str, variant: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", f"{preset}:{variant}",
               "--batch-size", str(args.batch_size), "--lines-per-writer", str(args.lines_per_writer),
               "--threads", str(args.threads), "--probe-steps", str(args.probe_steps), *args.overrides]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {preset}:{variant} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- timing ------------------------------------------------------------------------------------
def time_preset(args, preset: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        setup = Setup(preset, args.batch_size, args.lines_per_writer, args.warmup + steps, VARIANTS, out,
                      args.overrides)
        setup.warm_cache()
        log.info("%s: built and warmed in %.0f s (%d batches of %d)", preset, time.perf_counter() - started,
                 len(setup.batches), args.batch_size)
        runs: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in VARIANTS}
        for i, batch in enumerate(setup.batches):
            order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]  # A B, B A, ...
            for variant in order:
                result = setup.step(variant, batch)
                if i >= args.warmup:
                    runs[variant].append(result)
            log.info("%s: step %d/%d", preset, i + 1, len(setup.batches))
        row = {"preset": preset, "batch_size": args.batch_size, "steps": steps,
               "t5_parameters": setup.t5_parameters, "vae_parameters": setup.vae_parameters,
               "cache_mb": setup.cache_bytes() / 2**20, "cached_images": len(setup.modules["cache"].latents),
               "precision": setup.precision, "attention": setup.cfg.model.attention,
               "mean_target_px": statistics.mean(int(b.target.shape[-1]) for b in setup.batches)}
    for variant in VARIANTS:
        cpu = statistics.median(r[0] for r in runs[variant])
        wall = statistics.median(r[1] for r in runs[variant])
        latents = statistics.median(r[2] for r in runs[variant])
        row[variant] = {"cpu_s": cpu, "wall_s": wall, "latents_cpu_s": latents,
                        "t5_cpu_s": statistics.median(r[0] - r[2] for r in runs[variant]),
                        "samples_per_s_cpu": args.batch_size / cpu,
                        "samples_per_s_wall": args.batch_size / wall,
                        "cpu_s_all": [r[0] for r in runs[variant]],
                        "wall_s_all": [r[1] for r in runs[variant]]}
    row["speedup_cpu"] = row["encode"]["cpu_s"] / row["cache"]["cpu_s"]
    row["speedup_wall"] = row["encode"]["wall_s"] / row["cache"]["wall_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=32, help="lines per step (the demo's 32)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant, tiny preset")
    parser.add_argument("--small-steps", type=int, default=4, help="timed steps per variant, small preset")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--lines-per-writer", type=int, default=8,
                        help="training lines per writer rendered for the batches (40 writers)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--probe-steps", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)  # PRESET:VARIANT, internal
    parser.add_argument("overrides", nargs="*",
                        help="extra Hydra overrides for every preset, "
                             "e.g. vae.arch.block_out_channels=[16,32,64,128]")
    args = parser.parse_args()
    set_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return

    rows = []
    for preset in args.presets:
        steps = args.steps if preset == "tiny" else args.small_steps
        row = time_preset(args, preset, steps)
        if not args.no_memory:
            for variant in VARIANTS:
                row[variant]["memory"] = probe_in_subprocess(args, preset, variant)
                log.info("%s %s: peak RSS %.0f MB", preset, variant, row[variant]["memory"]["peak_rss_mb"])
        rows.append(row)

    header = (f"{'preset':<6} {'variant':<7} {'step cpu s':>10} {'latents s':>9} {'T5 s':>6} "
              f"{'step wall s':>11} {'samples/s':>9} "
              f"{'peak RSS MB':>11} {'step rise MB':>12} {'x cpu':>6} {'x wall':>6}")
    lines = [(f"batch {args.batch_size}, {args.threads} thread(s), medians of interleaved steps; CPU seconds "
              "unless marked wall; latents = ImuruModule._inputs, T5 = forward + backward + clip + AdamW; "
              "cache = warm latent cache, encode = VAE encoder on style and target every step"),
             header, "-" * len(header)]
    for row in rows:
        for variant in VARIANTS:
            r = row[variant]
            memory = r.get("memory")
            peak = f"{memory['peak_rss_mb']:11.0f}" if memory else f"{'-':>11}"
            rise = f"{memory['step_rise_mb']:12.0f}" if memory else f"{'-':>12}"
            speed = (f"{row['speedup_cpu']:6.2f} {row['speedup_wall']:6.2f}" if variant == "cache"
                     else f"{'':>6} {'':>6}")
            lines.append(f"{row['preset']:<6} {variant:<7} {r['cpu_s']:10.3f} {r['latents_cpu_s']:9.3f} "
                         f"{r['t5_cpu_s']:6.3f} {r['wall_s']:11.3f} "
                         f"{r['samples_per_s_cpu']:9.1f} {peak} {rise} {speed}")
    for row in rows:
        lines.append(f"{row['preset']}: T5 {row['t5_parameters'] / 1e6:.1f} M, "
                     f"VAE {row['vae_parameters'] / 1e6:.2f} M "
                     f"parameters; cache holds {row['cached_images']} images in {row['cache_mb']:.2f} MB "
                     f"({1024 * row['cache_mb'] / max(1, row['cached_images']):.1f} KB each); "
                     f"padded target width {row['mean_target_px']:.0f} px; precision {row['precision']}, "
                     f"{row['attention']} attention")
    print("\n".join(lines))
    print(json.dumps({"device": "cpu", "threads": args.threads, "clock": "process_time and perf_counter",
                      "batch_size": args.batch_size, "overrides": args.overrides,
                      "memory": "peak RSS (VmHWM, reset before the steps)",
                      "rows": rows}))


if __name__ == "__main__":
    main()
