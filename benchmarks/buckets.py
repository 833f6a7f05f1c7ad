"""Batches of similar widths (`data.bucket_batches`) against plain shuffled batches: padding and step time.

Two figures for each setting, on the training lines of a composed experiment (default `experiment=legible`,
its curriculum switched off: the steady state after it):

1. padding: over one whole epoch of the sampler, the decoder positions a step computes (each batch padded
   to its widest style prefix and its widest target, with the model's trailing blank columns and reduction
   factor) against the positions the lines need; and the same for the text tokens. No model runs.
2. step: real optimiser steps (`ImuruModule` latents from a warm cache, forward, backward, clipping, AdamW,
   one module per setting from the same initial weights) on `--steps` batches of each setting's loader,
   the settings interleaved, after one untimed step each; median and mean CPU seconds per step and lines
   per CPU second.

The VAE is freshly initialised (speed does not depend on its weights).

    OMP_NUM_THREADS=1 python benchmarks/buckets.py                       # legible data, k = 16, ~3 minutes
    OMP_NUM_THREADS=1 python benchmarks/buckets.py --buckets 8 16 32 --steps 10

Prints a table and ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training import compose_cfg, frozen_vae, set_threads, step_autocast  # the same directory

log = logging.getLogger("benchmarks.buckets")
COLUMN_PX = 8


def positions(batches: list[list[int]], style_cols: np.ndarray, target_steps: np.ndarray,
              text_tokens: np.ndarray) -> dict:
    """Decoder and encoder positions computed (padded) and needed, summed over `batches`."""
    decoder = style_cols + 1 + target_steps  # style prefix, SOS, target steps
    padded = sum(len(b) * (int(style_cols[b].max()) + 1 + int(target_steps[b].max())) for b in batches)
    text_padded = sum(len(b) * int(text_tokens[b].max()) for b in batches)
    lines = [i for b in batches for i in b]
    return {"decoder_padded": padded, "decoder_needed": int(decoder[lines].sum()),
            "text_padded": text_padded, "text_needed": int(text_tokens[lines].sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buckets", type=int, nargs="+", default=[16],
                        help="bucket_batches settings (0, plain batches, is always added)")
    parser.add_argument("--steps", type=int, default=12, help="timed optimiser steps per setting")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=legible)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    set_threads(args.threads)
    from hydra.utils import instantiate

    from imuru_pl.models.tokenizer import encode_texts
    from imuru_pl.tasks.train import build_module

    settings = [0, *[k for k in args.buckets if k > 1]]
    overrides = args.overrides or ["experiment=legible"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_cfg([*overrides, "data.curriculum.steps=0"], tmp)
    modules, loaders, padding = {}, {}, {}
    torch.manual_seed(0)
    vae = frozen_vae(cfg)
    base = instantiate(cfg.model, _convert_="all")
    r, blanks = base.reduction_factor, base.trailing_blank_columns
    for k in settings:
        cfg.data.bucket_batches = k
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        dataset = datamodule.train_dataset
        widths = np.asarray(dataset.pixel_widths)
        style_cols = -(-widths[:, 0] // COLUMN_PX)
        target_steps = -(-(-(-widths[:, 1] // COLUMN_PX) + blanks) // r)
        text_tokens = encode_texts(dataset.texts)[1].sum(1).numpy()
        loader = datamodule.train_dataloader()
        padding[k] = positions(list(loader.batch_sampler), style_cols, target_steps, text_tokens)
        loaders[k] = iter(loader)
        modules[k] = build_module(cfg, vae, copy.deepcopy(base)).train()
    lines = len(dataset)

    clip = float(cfg.trainer.get("gradient_clip_val") or 0.0)
    optimizers = {k: torch.optim.AdamW(m.model.parameters(), lr=float(m.optim["lr"]))
                  for k, m in modules.items()}
    times: dict[int, list[float]] = {k: [] for k in settings}
    sizes: dict[int, list[int]] = {k: [] for k in settings}
    for step in range(args.steps + 1):  # step 0 warms every module up, untimed
        for k in settings:
            module, batch = modules[k], next(loaders[k])
            module.latents.posterior(batch.style, batch.style_widths, batch.style_keys)  # warm cache
            module.latents.posterior(batch.target, batch.target_widths, batch.target_keys)
            cpu = time.process_time()
            optimizers[k].zero_grad(set_to_none=True)
            with step_autocast(str(cfg.trainer.precision)):  # the experiment's precision, as Lightning
                loss = module.model(**module._inputs(batch)).loss
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(module.model.parameters(), clip)
            optimizers[k].step()
            if step > 0:
                times[k].append(time.process_time() - cpu)
                sizes[k].append(len(batch))
        log.info("step %d/%d done", step, args.steps)

    rows = []
    for k in settings:
        p = padding[k]
        rows.append({
            "bucket_batches": k, "lines": lines,
            "decoder_positions_per_line": p["decoder_padded"] / lines,
            "decoder_padding_share": 1 - p["decoder_needed"] / p["decoder_padded"],
            "text_padding_share": 1 - p["text_needed"] / p["text_padded"],
            "step_cpu_s_median": statistics.median(times[k]), "step_cpu_s_mean": statistics.mean(times[k]),
            "lines_per_cpu_s": sum(sizes[k]) / sum(times[k]),
        })
    plain = rows[0]
    print(f"\n{' '.join(overrides)}, curriculum off, batch {cfg.data.batch_size}, r {r}, {lines} training "
          f"lines, {args.steps} timed steps per setting, {args.threads} thread(s), CPU seconds")
    print(f"{'bucket_batches':>14} {'decoder pos/line':>16} {'decoder padding':>15} {'text padding':>12} "
          f"{'step median s':>13} {'step mean s':>11} {'lines/s':>8} {'vs plain':>8}")
    for row in rows:
        speedup = row["lines_per_cpu_s"] / plain["lines_per_cpu_s"]
        row["speedup"] = speedup
        print(f"{row['bucket_batches']:>14} {row['decoder_positions_per_line']:16.1f} "
              f"{row['decoder_padding_share']:15.1%} {row['text_padding_share']:12.1%} "
              f"{row['step_cpu_s_median']:13.3f} {row['step_cpu_s_mean']:11.3f} "
              f"{row['lines_per_cpu_s']:8.1f} {speedup:7.2f}x")
    print(json.dumps({"benchmark": "buckets", "overrides": overrides, "threads": args.threads,
                      "steps": args.steps, "rows": rows}))


if __name__ == "__main__":
    main()
