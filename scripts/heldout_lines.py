"""Write and score a finished run's held-out lines again, with its own config and exported model.

    .venv/bin/python scripts/heldout_lines.py --run outputs/train/<run> --out <dir> [key=value ...]

Loads `<run>/.hydra/config.yaml` (the run's composed config) and `<run>/model`, applies the overrides
(e.g. `heldout.style_text_widths=true`, `heldout.num_lines=128`) and runs the same held-out step as the end
of training (`imuru_pl.tasks.heldout`): `<out>/heldout/` gets the generated, real and wrong-writer lines,
the grid and `evaluation.json`. `scripts/legibility_table.py <out> --families` reads `<out>` as it reads a
run (figures and widths per font family; no learning curve). Prints the headline figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from imuru_pl.errors import UserError
from imuru_pl.pipeline import ImuruPipeline
from imuru_pl.tasks.heldout import write_heldout_lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished training run (<run>/model, <run>/.hydra)")
    parser.add_argument("--out", required=True, type=Path, help="where heldout/ is written (not the run itself)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run's config")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = args.run / ".hydra" / "config.yaml"
    try:
        if not config.is_file():
            raise UserError(f"{args.run} holds no .hydra/config.yaml: give a run directory written by run.py.")
        if args.out.resolve() == args.run.resolve():
            raise UserError("--out names the run itself; give another directory so the run's own lines stay.")
        bad = [o for o in args.overrides if "=" not in o]
        if bad:
            raise UserError(f"Overrides are key=value; got {' '.join(bad)}.")
        cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(args.overrides))
        cfg.paths.output_dir = str(args.out)  # the run's own pointed at Hydra's runtime, absent here
        pipeline = ImuruPipeline.from_pretrained(args.run / "model")
        result = write_heldout_lines(cfg, pipeline, instantiate(cfg.data), args.out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"run": str(args.run), "overrides": args.overrides, **result.get("evaluation", {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
