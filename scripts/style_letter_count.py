"""How well does a model's letter counter (`model.letter_count_weight`) count the letters of style lines?

    .venv/bin/python scripts/style_letter_count.py --model-dir outputs/train/<run>/model [--lines 96]
        [key=value ...]

For lines spread over each split of the synthetic data (train, val, test), encodes each item's style line
with the model's VAE and compares the counter's letter count with the length of the style line's text, per
font family (writer ids `<family>-<n>`): the mean signed relative error (negative: too few letters counted,
so the duration head plans letters too wide) and the mean absolute one. Prints a table, then one JSON line.
Extra `key=value` arguments override the composed config (default: the legible experiment's data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from imuru_pl.data.batch import collate_lines
from imuru_pl.errors import UserError
from imuru_pl.models.latents import LatentEncoder
from imuru_pl.pipeline import ImuruPipeline

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


@torch.inference_mode()
def count_errors(pipeline: ImuruPipeline, dataset, lines: int) -> dict[str, list[float]]:
    """Per font family, the relative error of the counted letters of each style line."""
    latents, errors = LatentEncoder(pipeline.vae), {}
    rows = np.unique(np.linspace(0, len(dataset) - 1, min(lines, len(dataset))).astype(int))
    for start in range(0, len(rows), BATCH):
        batch = collate_lines([dataset[int(i)] for i in rows[start : start + BATCH]])
        style, style_mask = latents.style(batch.style, batch.style_widths, sample=False)
        _, counted = pipeline.model.writer_summary(style, style_mask)
        for writer, count, text in zip(batch.writers, counted.tolist(), batch.style_texts):
            errors.setdefault(writer.rsplit("-", 1)[0], []).append(count / len(text) - 1.0)
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True, help="an exported model directory (<run>/model)")
    parser.add_argument("--lines", type=int, default=96, help="lines per split")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        pipeline = ImuruPipeline.from_pretrained(args.model_dir)
        if pipeline.model.letter_count_weight <= 0:
            raise UserError(f"The model in {args.model_dir} has no letter counter (letter_count_weight 0).")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pipeline.model.eval()
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("run", overrides=["experiment=legible", *args.overrides])
    datamodule = instantiate(cfg.data)
    result = {}
    print("| split | family | lines | counted letters, signed error | absolute |")
    print("|---|---|---|---|---|")
    for split in ("train", "val", "test"):
        for family, values in count_errors(pipeline, datamodule.dataset(split), args.lines).items():
            signed, absolute = float(np.mean(values)), float(np.mean(np.abs(values)))
            result.setdefault(split, {})[family] = {"lines": len(values), "signed": signed, "absolute": absolute}
            print(f"| {split} | {family} | {len(values)} | {signed:+.3f} | {absolute:.3f} |")
    print(json.dumps({"model_dir": args.model_dir, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
