"""Generation speed: Imuru's cached generator against the reference full-recompute loop.

Same weights (random, t5-small dimensions), same inputs, stopping disabled, so every run writes
exactly the requested number of columns. A third column shows the textbook transformers loop (the
decoder called once per column with an `EncoderDecoderCache`) to separate what a KV cache alone
gives from what the preallocated single-token step adds.

    OMP_NUM_THREADS=1 python benchmarks/generation.py                 # full table, a few minutes
    OMP_NUM_THREADS=1 python benchmarks/generation.py --columns 64 --batch 1 --skip-full

Times are CPU seconds of this process (`time.process_time`; with one thread they equal wall time
on an idle machine and barely move when other jobs share the cores); the JSON line also keeps the
wall-clock seconds. The cached loops keep the best of `--repeats` interleaved runs.

Prints a table and ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from functools import partial

import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from imuru_pl.models.generation import pad_latents
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.tokenizer import encode_texts

log = logging.getLogger("benchmarks.generation")

T5_SMALL = {
    "d_model": 512,
    "num_layers": 6,
    "num_decoder_layers": 6,
    "num_heads": 8,
    "d_kv": 64,
    "d_ff": 2048,
}
TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river",
    "Handwriting is a window into the writer's hand",
    "Please send the parcel before Friday morning",
    "A line of text, written once and read many times over",
    "Numbers like 1984 and 2025 appear in letters too",
    "She sells sea shells by the sea shore",
    "Every style image is a few words long",
    "Long lines take more columns to write out in full",
]
STYLE_COLUMNS = [48, 40, 56, 32, 64, 44, 52, 36]  # 256-512 px style lines; the first is batch 1's


def make_inputs(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids, text_mask = encode_texts(TEXTS[:batch])
    style, style_mask = pad_latents([torch.randn(w, 8, generator=gen) for w in STYLE_COLUMNS[:batch]])
    return ids, text_mask, style, style_mask


@torch.inference_mode()
def generate_plain_cache(model: Imuru, ids, text_mask, style, style_mask, steps: int) -> torch.Tensor:
    """Textbook KV-cache loop: stock decoder call per column, DynamicCache growing by concatenation."""
    encoded = model.encode_text(ids, text_mask)
    prefix, prefix_mask = model.style_prefix(style, style_mask)
    batch = prefix.shape[0]
    mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, steps)], dim=1)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    embeds = torch.cat([prefix, model.sos.weight.expand(batch, 1, -1)], dim=1)
    columns = []
    for _ in range(steps):
        length = cache.get_seq_length() + embeds.shape[1]
        hidden = model.decoder(
            inputs_embeds=embeds,
            attention_mask=mask[:, :length],
            encoder_hidden_states=encoded,
            encoder_attention_mask=text_mask,
            cache=cache,
            use_cache=True,
        ).last_hidden_state[:, -1:]
        column = model.t5_to_vae(hidden)
        columns.append(model.denormalise(column))
        embeds = model.vae_to_t5(column)
    return torch.cat(columns, dim=1)


def timed(fn) -> tuple[float, float, object]:
    """(CPU seconds, wall seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--columns", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the cached loops (best kept)")
    parser.add_argument("--skip-full", action="store_true", help="skip the slow full-recompute loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Imuru(t5=T5_SMALL, style_enc="full").eval()
    log.info(
        "Imuru, t5-small dimensions, %.1f M parameters, %d thread(s), style_enc full, stopping off",
        model.num_parameters() / 1e6,
        args.threads,
    )
    model.generate(*make_inputs(1), max_new_columns=4, stop=None)  # warm-up

    rows = []
    for batch in args.batch:
        inputs = make_inputs(batch)
        for steps in args.columns:
            run_ours = partial(model.generate, *inputs, max_new_columns=steps, stop=None)
            run_plain = partial(generate_plain_cache, model, *inputs, steps)
            ours_runs, plain_runs = [], []
            for _ in range(args.repeats):  # interleaved, so that a busy spell hits both alike
                ours_runs.append(timed(run_ours))
                plain_runs.append(timed(run_plain))
            ours_s, ours_wall, (ours, _) = min(ours_runs, key=lambda run: run[0])
            plain_s, plain_wall, plain = min(plain_runs, key=lambda run: run[0])
            row = {
                "batch": batch,
                "columns": steps,
                "ours_s": ours_s,
                "ours_wall_s": ours_wall,
                "plain_cache_s": plain_s,
                "plain_cache_wall_s": plain_wall,
                "ours_ms_per_step": 1000 * ours_s / steps,
                "ours_columns_per_s": batch * steps / ours_s,
                "max_abs_diff_plain": float((ours - plain).abs().max()),
            }
            if not args.skip_full:
                full_s, full_wall, (full, _) = timed(
                    partial(model.generate_full_recompute, *inputs, max_new_columns=steps, stop=None)
                )
                row |= {
                    "full_s": full_s,
                    "full_wall_s": full_wall,
                    "speedup_vs_full": full_s / ours_s,
                    "max_abs_diff_full": float((ours - full).abs().max()),
                }
            row["speedup_vs_plain"] = plain_s / ours_s
            rows.append(row)
            log.info("done: batch %d, %d columns", batch, steps)

    header = (
        f"{'batch':>5} {'cols':>5} {'full s':>8} {'plain s':>8} {'ours s':>7} {'ms/step':>8} "
        f"{'cols/s':>7} {'x full':>7} {'x plain':>7} {'max|diff|':>9}"
    )
    legend = (
        "CPU seconds; full = encoder + decoder re-run per column, plain = stock decoder with a "
        "transformers KV cache, ours = Imuru.generate"
    )
    lines = [legend, header, "-" * len(header)]
    for r in rows:
        full = f"{r['full_s']:8.2f}" if "full_s" in r else f"{'-':>8}"
        speed = f"{r['speedup_vs_full']:7.1f}" if "full_s" in r else f"{'-':>7}"
        diff = r.get("max_abs_diff_full", r["max_abs_diff_plain"])
        lines.append(
            f"{r['batch']:5d} {r['columns']:5d} {full} {r['plain_cache_s']:8.2f} {r['ours_s']:7.2f} "
            f"{r['ours_ms_per_step']:8.2f} {r['ours_columns_per_s']:7.0f} {speed} {r['speedup_vs_plain']:7.2f} {diff:9.1e}"
        )
    step_ratio = {}
    for r in rows:
        one = next((o for o in rows if o["batch"] == 1 and o["columns"] == r["columns"]), None)
        if one is not None and r["batch"] != 1:
            step_ratio[f"b{r['batch']}_over_b1_at_{r['columns']}"] = (
                r["ours_ms_per_step"] / one["ours_ms_per_step"]
            )
    for key, value in step_ratio.items():
        lines.append(f"time per step, {key.replace('_', ' ')}: {value:.2f}x")
    print("\n".join(lines))
    summary = {
        "device": "cpu",
        "threads": args.threads,
        "clock": "process_time",
        "rows": rows,
        "step_ratio": step_ratio,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
