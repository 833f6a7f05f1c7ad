"""Does a model's width plan follow the hand? Planned line widths against the real ones, per font family,
and how the plan answers a style line stretched horizontally.

    .venv/bin/python scripts/width_response.py --model-dir outputs/train/<run>/model [--lines 96]
        [--stretch 0.8,1.25] [key=value ...]

For lines spread over each split of the synthetic data (train, val, test), the duration head of a model with
aligned letters plans each item's target text from its style line; the plan is the generated line's width.
Per font family (writer ids `<family>-<n>`): the mean signed relative error of the planned width against
the target's real columns (positive: written too wide), and, for each stretch factor s, the plan from the
same style line resized to s times its width over the plan from the original. A plan that measures the hand
answers about s; one that only recognises the script answers about 1 (lines planned empty are left out of
the ratio: null where every line of a family was). No lines are generated, so it takes
seconds. Prints a table, then one JSON line. Extra `key=value` arguments override the composed config
(default: the legible experiment's data).
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
from torch import Tensor

from imuru_pl.data.batch import COLUMN_PX, collate_lines
from imuru_pl.errors import UserError
from imuru_pl.models.latents import LatentEncoder, column_counts
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.pipeline import ImuruPipeline

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


def stretched(images: Tensor, widths: Tensor, factor: float) -> tuple[Tensor, Tensor]:
    """Each style image resized to `factor` times its own width, white-padded to a multiple of 8 px."""
    rows, new_widths = [], []
    for image, width in zip(images, widths.tolist()):
        new = max(COLUMN_PX, round(width * factor))
        rows.append(torch.nn.functional.interpolate(image[None, :, :, :width], size=(image.shape[-2], new),
                                                    mode="bilinear", antialias=True, align_corners=False)[0])
        new_widths.append(new)
    padded = -(-max(new_widths) // COLUMN_PX) * COLUMN_PX
    out = torch.ones(len(rows), images.shape[1], images.shape[2], padded)
    for i, row in enumerate(rows):
        out[i, :, :, : row.shape[-1]] = row.clamp(-1, 1)
    return out, torch.tensor(new_widths)


@torch.inference_mode()
def plan_figures(pipeline: ImuruPipeline, dataset, lines: int, factors: list[float]) -> dict[str, dict]:
    """Per font family: the planned widths' relative errors and, per factor, the plans' ratios."""
    model, latents, families = pipeline.model, LatentEncoder(pipeline.vae), {}
    rows = np.unique(np.linspace(0, len(dataset) - 1, min(lines, len(dataset))).astype(int))
    for start in range(0, len(rows), BATCH):
        batch = collate_lines([dataset[int(i)] for i in rows[start : start + BATCH]])
        text_ids, text_mask = encode_texts(batch.texts)
        encoded = model.encode_text(text_ids, text_mask)

        def plan(images: Tensor, widths: Tensor) -> Tensor:
            style, style_mask = latents.style(images, widths, sample=False)
            return model.letters.letter_widths(model.encode_text, encoded, text_ids, model.normalise(style),
                                               style_mask).sum(1).float()

        planned = plan(batch.style, batch.style_widths)
        real = column_counts(batch.target_widths).float()
        answers = {f: plan(*stretched(batch.style, batch.style_widths, f)) / planned.clamp_min(1) for f in factors}
        for i, writer in enumerate(batch.writers):
            entry = families.setdefault(writer.rsplit("-", 1)[0], {"error": [], **{f: [] for f in factors}})
            entry["error"].append(float(planned[i] / real[i] - 1.0))
            for f in factors:
                if planned[i] > 0:  # a line planned empty has no ratio
                    entry[f].append(float(answers[f][i]))
    return families


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True, help="an exported model directory (<run>/model)")
    parser.add_argument("--lines", type=int, default=96, help="lines per split")
    parser.add_argument("--stretch", default="0.8,1.25", help="style width factors, comma-separated")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        try:
            args.stretch = [float(f) for f in args.stretch.split(",")]
        except ValueError:
            raise UserError(f"--stretch takes comma-separated numbers, e.g. 0.8,1.25; got {args.stretch!r}.") from None
        if any(not 0.25 <= f <= 4 for f in args.stretch):
            raise UserError(f"--stretch factors must lie in [0.25, 4]; got {args.stretch}.")
        pipeline = ImuruPipeline.from_pretrained(args.model_dir)
        if pipeline.model.letters is None:
            raise UserError(f"The model in {args.model_dir} plans no widths (model.letters is off).")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pipeline.model.eval()
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("run", overrides=["experiment=legible", *args.overrides])
    datamodule = instantiate(cfg.data)
    result = {}
    print("| split | family | lines | planned width, signed error | within 15 % | "
          + " | ".join(f"plan at x{f:g} style width" for f in args.stretch) + " |")
    print("|---|---|---|---|---|" + "---|" * len(args.stretch))
    for split in ("train", "val", "test"):
        for family, values in plan_figures(pipeline, datamodule.dataset(split), args.lines, args.stretch).items():
            errors = np.array(values["error"])
            row = {"lines": len(errors), "signed": float(errors.mean()),
                   "within_15": float((np.abs(errors) <= 0.15).mean()),
                   "stretch": {f"{f:g}": float(np.mean(values[f])) if values[f] else None for f in args.stretch}}
            result.setdefault(split, {})[family] = row
            print(f"| {split} | {family} | {row['lines']} | {row['signed']:+.3f} | {row['within_15']:.0%} | "
                  + " | ".join("-" if v is None else f"x{v:.3f}" for v in row["stretch"].values()) + " |")
    print(json.dumps({"model_dir": args.model_dir, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
