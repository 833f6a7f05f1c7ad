"""Gallery of an exported model on held-out writers: each row is a writer's style line beside the line
the model wrote for it (and, with --real, the writer's own render of that text), with small captions.

Regenerate the README image (newest `outputs/train/*/model` by default):

    .venv/bin/python scripts/gallery.py [--model-dir outputs/train/<run>/model] [--writers 6] [--beside starter]

The held-out writers come from the run's own data config (`<run>/.hydra/overrides.yaml` replayed on
`conf/`), so the rows show writers the model never trained on. Extra `key=value` arguments override that
config (e.g. `data.lines_per_writer.test=4`).

Any style images instead of the held-out writers (photos or scans of handwriting, one row each), one text:

    .venv/bin/python scripts/gallery.py --model-dir starter --styles ../my_lines/*.png --text "..." --out x.png

The style images the project ships for the notebook and README (`assets/styles/`) are style lines of
held-out writers of the default synthetic data; they need no model:

    .venv/bin/python scripts/gallery.py --styles-only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image, ImageDraw, ImageFont

from imuru_pl.bundled import is_bundled, resolve
from imuru_pl.console import progress
from imuru_pl.data.batch import collate_lines
from imuru_pl.data.image import tensor_to_image
from imuru_pl.pipeline import ImuruPipeline, write_lines
from imuru_pl.tasks.preview import BACKGROUND, LABEL_COLOUR, caption

ROOT = Path(__file__).resolve().parents[1]
GAP = 8
BATCH = 8  # lines generated together
# The style images shipped in assets/styles/: one held-out writer per text, each from another font family.
STYLE_TEXTS = ("Every line tells a story.", "Write this in my hand, please")
# Generated lines are cut off here (px / 8 columns): a model that has not learnt to stop still fits the page.
DEFAULT_MAX_COLUMNS = 128


def newest_model_dir(root: Path = ROOT) -> Path | None:
    """The most recently exported model under outputs/train (a directory with config.json and vae/)."""
    models = [p.parent for p in root.glob("outputs/train/*/model/config.json") if (p.parent / "vae").is_dir()]
    return max(models, key=lambda p: (p / "config.json").stat().st_mtime) if models else None


def run_overrides(model_dir: Path) -> list[str]:
    """The command-line overrides of the run that exported `model_dir`, minus Hydra's own settings."""
    path = model_dir.parent / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [o for o in yaml.safe_load(path.read_text()) or [] if not o.lstrip("+~").startswith("hydra.")]


def data_config(overrides: list[str]):
    """The `data` node of `conf/run.yaml` with `overrides` applied (Hydra's compose API)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="run", overrides=overrides).data


def family(writer_id: str) -> str:
    head, _, tail = writer_id.rpartition("-")
    return head if head and tail.isdigit() else writer_id


def spread_samples(dataset, count: int) -> list[dict]:
    """The first line of `count` writers, taken round-robin over font families (one family per row first)."""
    first: dict[str, int] = {}
    for i in range(len(dataset)):
        writer = dataset.store.writer_ids[i] if hasattr(dataset, "store") else dataset[i]["writer"]
        first.setdefault(writer, i)
    rank: dict[str, int] = {}
    order = []
    for writer in first:
        fam = family(writer)
        order.append((rank.setdefault(fam, 0), writer))
        rank[fam] += 1
    return [dataset[first[w]] for _, w in sorted(order, key=lambda t: t[0])[:count]]


def pad_to(cell: Image.Image, width: int) -> Image.Image:
    if cell.width >= width:
        return cell
    out = Image.new("RGB", (width, cell.height), BACKGROUND)
    out.paste(cell, (0, 0))
    return out


def gallery(rows: list[list[Image.Image]], title: str, font) -> Image.Image:
    """Captioned cells in aligned columns under a one-line title."""
    columns = max(len(r) for r in rows)
    widths = [max(r[c].width for r in rows if c < len(r)) for c in range(columns)]
    rows = [[pad_to(cell, widths[c]) if c < columns - 1 else cell for c, cell in enumerate(r)] for r in rows]
    row_height = max(cell.height for r in rows for cell in r)
    width = GAP + sum(widths) + GAP * columns
    title_px = 20
    canvas = Image.new("RGB", (width, title_px + GAP + (row_height + GAP) * len(rows)), BACKGROUND)
    ImageDraw.Draw(canvas).text((GAP, 4), title, fill=LABEL_COLOUR, font=font)
    y = title_px + GAP
    for r in rows:
        x = GAP
        for c, cell in enumerate(r):
            canvas.paste(cell, (x, y))
            x += widths[c] + GAP
        y += row_height + GAP
    return canvas


def model_path(value: Path) -> Path:
    """A model directory as given, or the package's own for a bundled name (starter)."""
    return resolve(str(value)) if not value.exists() and is_bundled(str(value)) else value


def write_samples(model_dir: Path, samples: list[dict], max_new_columns: int, device: str) -> list:
    pipeline = ImuruPipeline.from_pretrained(model_dir, device=device)
    started = time.time()
    generated = []
    for start in progress(range(0, len(samples), BATCH), desc="Generating", unit="batch"):
        batch = collate_lines(samples[start : start + BATCH])
        generated += write_lines(pipeline.model, pipeline.vae, batch.style, batch.style_widths, batch.texts,
                                 min(max_new_columns, pipeline.model.max_new_columns),
                                 pipeline.read_styles(batch.style, batch.style_widths))
    print(f"Wrote {len(samples)} lines in {time.time() - started:.1f} s with {model_dir}")
    return generated


def make_gallery(model_dir: Path, out: Path, writers: int, overrides: list[str], real: bool,
                 max_new_columns: int, device: str, beside: Path | None = None) -> Path:
    data_cfg = data_config(run_overrides(model_dir) + overrides)
    datamodule = instantiate(data_cfg)
    datamodule.setup("test")
    samples = spread_samples(datamodule.test_dataset, writers)
    generated = write_samples(model_dir, samples, max_new_columns, device)
    other = write_samples(model_path(beside), samples, max_new_columns, device) if beside else [None] * len(samples)
    font = ImageFont.load_default(size=11)
    rows = []
    for sample, image, theirs in zip(samples, generated, other):
        row = [caption(tensor_to_image(sample["style"]), f"{sample['writer']}: style image", font),
               caption(tensor_to_image(image), f"generated: {sample['text']}", font)]
        if theirs is not None:
            row.append(caption(tensor_to_image(theirs), f"{beside}: the same text", font))
        if real:
            row.append(caption(tensor_to_image(sample["target"]), "the writer's own line", font))
        rows.append(row)
    title = "Held-out writers (never seen in training): style image | line generated in that style"
    image = gallery(rows, title + (f" | {beside}'s line" if beside else "") + (" | real line" if real else ""), font)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out


def make_style_gallery(model_dir: Path, styles: list[Path], text: str, out: Path, max_new_columns: int,
                       device: str) -> Path:
    """One row per style image (any image PIL opens): the image as the model takes it | `text` in it."""
    pipeline = ImuruPipeline.from_pretrained(model_dir, device=device)
    font = ImageFont.load_default(size=11)
    rows = []
    for path in progress(styles, desc="Generating", unit="style"):
        style = pipeline.load_styles([path])
        line = pipeline.generate_lines(style, [text], min(max_new_columns, pipeline.model.max_new_columns))[0]
        rows.append([caption(tensor_to_image(style), f"{path.name}: style image", font),
                     caption(tensor_to_image(line), f"written: {text}", font)])
    image = gallery(rows, "Outside handwriting: style image | line written in that style", font)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    return out


def write_styles(directory: Path, texts: tuple[str, ...] = STYLE_TEXTS) -> list[Path]:
    """Style lines on paper, one per text, by held-out writers of the default synthetic data (one writer
    per font family), saved as `<writer>.png`."""
    datamodule = instantiate(data_config([]))
    by_family: dict[str, object] = {}
    for writer in datamodule.writers("test"):
        by_family.setdefault(family(writer.id), writer)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for writer, text in zip(by_family.values(), texts):
        path = directory / f"{writer.id}.png"
        Image.fromarray(datamodule.render(text, writer).paper_array()).save(path, optimize=True)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="exported model (default: newest outputs/train/*/model)")
    parser.add_argument("--out", type=Path, default=ROOT / "assets" / "gallery.png")
    parser.add_argument("--writers", type=int, default=6, help="rows: one held-out writer each")
    parser.add_argument("--real", action="store_true", help="add each writer's own line of the text")
    parser.add_argument("--max-new-columns", type=int, default=DEFAULT_MAX_COLUMNS,
                        help="cap on generated columns (8 px each)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--styles-only", action="store_true",
                        help="write assets/styles/*.png (no model needed) and stop")
    parser.add_argument("--beside", type=Path, help="another model (or starter) writes the same lines beside")
    parser.add_argument("--styles", type=Path, nargs="+", help="style images to write in instead of held-out writers")
    parser.add_argument("--text", default="Handwriting from one line", help="the text written with --styles")
    parser.add_argument("overrides", nargs="*", help="config overrides for the data, key=value")
    args = parser.parse_args(argv)
    os.environ.setdefault("IMURU_PL_ROOT", str(ROOT))  # the configs anchor data and caches to the project root

    if args.styles_only:
        for path in write_styles(ROOT / "assets" / "styles"):
            print(f"Wrote {path.relative_to(ROOT)}")
        return 0
    model_dir = args.model_dir or newest_model_dir()
    model_dir = model_path(model_dir) if model_dir is not None else None
    if model_dir is None:
        print("No exported model found under outputs/train/*/model; train one (python run.py task=train) "
              "or pass --model-dir.", file=sys.stderr)
        return 2
    if args.styles:
        out = make_style_gallery(model_dir, args.styles, args.text, args.out, args.max_new_columns, args.device)
        print(f"Wrote {out} ({out.stat().st_size / 1e3:.0f} kB) from {model_dir}")
        return 0
    if args.writers < 1:
        print("--writers must be at least 1.", file=sys.stderr)
        return 2
    out = make_gallery(model_dir.resolve(), args.out, args.writers, args.overrides, args.real,
                       args.max_new_columns, args.device, args.beside)
    print(f"Wrote {out} ({out.stat().st_size / 1e3:.0f} kB) from {model_dir}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    raise SystemExit(main())
