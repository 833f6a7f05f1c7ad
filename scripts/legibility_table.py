"""The ablation table of docs/legibility.md, from finished training runs.

    .venv/bin/python scripts/legibility_table.py outputs/legibility/<run> [<run> ...] [--at-step 500]

Each run directory must hold `heldout/evaluation.json` and, for the curve's columns, `learning_curve.csv`
(metrics.enabled=true; a `python run.py task=heldout` output has none, its curve cells read "-").
Columns: steps and training minutes, CER of generated lines for held-out (test) and seen (training) writers,
CER of the real renders of the same held-out texts, HWD (relative: random backbone), stop rate and width error
of held-out lines, and the command (the run's overrides). `--at-step N` adds the learning curve at step N
(held-out validation writers: CER, stop rate, width error), the fair comparison between runs that shared
the CPU with other work and so reached different step counts in equal minutes. `--families` adds a second
table: per font family (writer ids `<family>-<n>`) of the held-out lines, the width of each generated image
(`heldout/generated`, trailing blank columns cropped) against its real render (`heldout/real`): the mean
signed error (positive: too wide), the mean absolute error and the share within 15 %, and the family's CER
(over its characters, from the OCR readings in `heldout/evaluation.json`; "-" where the run kept none).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import yaml
from PIL import Image

from imuru_pl.metrics.cer import cer


def curve(run: Path) -> list[dict[str, float | None]]:
    """The run's learning curve; one empty point for held-out lines written again without training
    (`python run.py task=heldout`)."""
    if not (run / "learning_curve.csv").is_file():
        return [{"step": None, "minutes": None}]
    with (run / "learning_curve.csv").open() as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
                for row in csv.DictReader(handle)]


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(run: Path, at_step: int | None) -> str:
    points = curve(run)
    last = points[-1]
    report = json.loads((run / "heldout" / "evaluation.json").read_text())["generated"]
    recorded = run / ".hydra" / "overrides.yaml"  # absent when paths.output_dir moved the outputs elsewhere
    overrides = (yaml.safe_load(recorded.read_text()) or []) if recorded.is_file() else None
    command = ("(not recorded here)" if overrides is None
               else "python run.py " + " ".join(o for o in overrides if not o.startswith("hydra.")))
    steps = "-" if last["step"] is None else str(int(last["step"]))
    cells = [run.name, steps, fmt(last["minutes"], 1), fmt(report.get("cer_fake")),
             fmt(last.get("cer_seen")), fmt(report.get("cer_real")), fmt(report.get("hwd")),
             fmt(report.get("stop_rate"), 2), fmt(report.get("width_error"), 2)]
    if at_step is not None:
        point = next((p for p in points if p["step"] is not None and int(p["step"]) == at_step), None)
        cells += ([fmt(point.get("cer_heldout")), fmt(point.get("stop_rate"), 2), fmt(point.get("width_error"), 2)]
                  if point else ["-", "-", "-"])
    return "| " + " | ".join(cells + [f"`{command}`"]) + " |"


def family_cers(run: Path) -> dict[str, float]:
    """Per font family, the CER of the generated held-out lines over the family's characters."""
    generated = json.loads((run / "heldout" / "evaluation.json").read_text())["generated"]
    readings: dict[str, tuple[list[str], list[str]]] = {}
    for item in generated.get("ocr_predictions", {}).get("fake", []):
        reads, texts = readings.setdefault(item["writer"].rsplit("-", 1)[0], ([], []))
        reads.append(item["read"])
        texts.append(item["text"])
    return {family: cer(reads, texts) for family, (reads, texts) in readings.items()}


def family_widths(run: Path) -> list[str]:
    """Rows of the per-family table (widths, CER) for one run."""
    cers = family_cers(run)
    errors: dict[str, list[float]] = {}
    for generated in sorted((run / "heldout" / "generated").glob("*/*.png")):
        real = run / "heldout" / "real" / generated.parent.name / generated.name
        with Image.open(generated) as fake_image, Image.open(real) as real_image:
            error = fake_image.width / real_image.width - 1.0
        errors.setdefault(generated.parent.name.rsplit("-", 1)[0], []).append(error)
    rows = []
    for family, values in errors.items():
        signed = sum(values) / len(values)
        absolute = sum(abs(v) for v in values) / len(values)
        within = sum(abs(v) <= 0.15 for v in values) / len(values)
        cells = [run.name, family, str(len(values)), f"{signed:+.3f}", f"{absolute:.3f}", f"{within:.2f}",
                 fmt(cers.get(family))]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--at-step", type=int, default=None)
    parser.add_argument("--families", action="store_true", help="add the per-family table (widths, CER)")
    args = parser.parse_args()
    header = ["run", "steps", "minutes", "CER held-out", "CER seen", "CER real", "HWD", "stop rate",
              "width error"]
    if args.at_step is not None:
        header += [f"step {args.at_step}: CER val", "stop rate", "width error"]
    print("| " + " | ".join(header + ["command"]) + " |")
    print("|" + "---|" * (len(header) + 1))
    for run in args.runs:
        print(row(run, args.at_step))
    if args.families:
        print("\n| run | family | lines | width error, signed | absolute | within 15 % | CER |")
        print("|" + "---|" * 7)
        for run in args.runs:
            print("\n".join(family_widths(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
