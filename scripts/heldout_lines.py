"""Write and score a finished run's held-out lines again, with its own config and exported model.

    .venv/bin/python scripts/heldout_lines.py --run outputs/train/<run> --out <dir> [key=value ...]

Loads `<run>/.hydra/config.yaml` (the run's composed config) and `<run>/model`, applies the overrides
(e.g. `heldout.style_text_widths=true`, `heldout.num_lines=128`) and runs the same held-out step as the end
of training (`imuru_pl.tasks.heldout`). `--checkpoint <ckpt> --weights trained|average` puts a training
checkpoint's weights into the exported model first: with `optim.ema_decay` on, a checkpoint holds both the
trained weights and their moving average, so the two are scored on the same step of the same run.
`<out>/heldout/` gets the generated, real and wrong-writer lines, the grid and `evaluation.json`.
`scripts/legibility_table.py <out> --families` reads `<out>` as it reads a run (figures and widths per font
family; no learning curve). With `duration_fit.steps=N` among the overrides the duration head is fitted
again first, as at the end of training (`imuru_pl.tasks.duration_fit`), and the refitted model is saved to
`<out>/model` (without it nothing is fitted, whatever the run's config says: a run's own fit is in its
exported model); `--model <out>/model` scores that model again with other overrides.
Prints the headline figures as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from imuru_pl.callbacks.checkpoint import read_checkpoint
from imuru_pl.errors import UserError
from imuru_pl.pipeline import ImuruPipeline
from imuru_pl.tasks.duration_fit import refit_durations
from imuru_pl.tasks.heldout import write_heldout_lines


def load_checkpoint_weights(pipeline: ImuruPipeline, path: Path, weights: str) -> None:
    """The checkpoint's `model.*` (trained) or `ema_model.*` (average) weights into the pipeline's model."""
    state = read_checkpoint(path)["state_dict"]
    prefix = "ema_model." if weights == "average" else "model."
    chosen = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not chosen:
        raise UserError(f"{path} holds no moving average of the weights (trained with optim.ema_decay=0); "
                        "use --weights trained.")
    try:
        pipeline.model.load_state_dict(chosen)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit the run's model ({str(err).splitlines()[0]}).") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a finished training run (<run>/model, <run>/.hydra)")
    parser.add_argument("--out", required=True, type=Path, help="where heldout/ is written (not the run itself)")
    parser.add_argument("--model", type=Path, help="an exported model to score instead of <run>/model "
                        "(e.g. one this script refitted and saved to <out>/model)")
    parser.add_argument("--checkpoint", type=Path, help="a training checkpoint of the run whose weights are scored")
    parser.add_argument("--weights", choices=("trained", "average"), default="average",
                        help="with --checkpoint: the optimiser's weights or their moving average (optim.ema_decay)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run's config")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
        if "duration_fit" in cfg and not any(o.startswith("duration_fit.steps=") for o in args.overrides):
            cfg.duration_fit.steps = 0  # the run's own fit is in its exported model already
        pipeline = ImuruPipeline.from_pretrained(args.model or args.run / "model")
        if args.checkpoint is not None:
            load_checkpoint_weights(pipeline, args.checkpoint, args.weights)
        refit = refit_durations(cfg, pipeline.model, pipeline.vae)
        if refit is not None:
            pipeline.save_pretrained(args.out / "model")
        result = write_heldout_lines(cfg, pipeline, instantiate(cfg.data), args.out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fitted = {"duration_fit": refit} if refit is not None else {}
    model = {"model": str(args.model)} if args.model is not None else {}
    figures = {"run": str(args.run), **model, "overrides": args.overrides, **fitted,
               **result.get("evaluation", {})}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
