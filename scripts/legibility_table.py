"""The ablation table of docs/legibility.md, from finished training runs.

    .venv/bin/python scripts/legibility_table.py outputs/legibility/<run> [<run> ...] [--at-step 500]

Each run directory must hold `learning_curve.csv` (metrics.enabled=true) and `heldout/evaluation.json`.
Columns: steps and training minutes, CER of generated lines for held-out (test) and seen (training) writers,
CER of the real renders of the same held-out texts, HWD (relative: random backbone), stop rate and width error
of held-out lines, and the command (the run's overrides). `--at-step N` adds the learning curve at step N
(held-out validation writers: CER, stop rate, width error), the fair comparison between runs that shared
the CPU with other work and so reached different step counts in equal minutes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml


def curve(run: Path) -> list[dict[str, float | None]]:
    with (run / "learning_curve.csv").open() as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(run: Path, at_step: int | None) -> str:
    points = curve(run)
    last = points[-1]
    report = json.loads((run / "heldout" / "evaluation.json").read_text())["generated"]
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    command = "python run.py " + " ".join(o for o in overrides if not o.startswith("hydra."))
    cells = [run.name, str(int(last["step"])), fmt(last["minutes"], 1), fmt(report.get("cer_fake")),
             fmt(last.get("cer_seen")), fmt(report.get("cer_real")), fmt(report.get("hwd")),
             fmt(report.get("stop_rate"), 2), fmt(report.get("width_error"), 2)]
    if at_step is not None:
        point = next((p for p in points if int(p["step"]) == at_step), None)
        cells += ([fmt(point.get("cer_heldout")), fmt(point.get("stop_rate"), 2), fmt(point.get("width_error"), 2)]
                  if point else ["-", "-", "-"])
    return "| " + " | ".join(cells + [f"`{command}`"]) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--at-step", type=int, default=None)
    args = parser.parse_args()
    header = ["run", "steps", "minutes", "CER held-out", "CER seen", "CER real", "HWD", "stop rate",
              "width error"]
    if args.at_step is not None:
        header += [f"step {args.at_step}: CER val", "stop rate", "width error"]
    print("| " + " | ".join(header + ["command"]) + " |")
    print("|" + "---|" * (len(header) + 1))
    for run in args.runs:
        print(row(run, args.at_step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
