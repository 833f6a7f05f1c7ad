"""Preview the synthetic data: `preview.png`, one row per writer: its style line, then clean target lines.

A quick look shows whether writers are distinct, each writer consistent, and every line whole and legible.
Only the lines shown are rendered (any line can be re-created alone), so the preview takes seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFont

from imuru_pl.data.datamodule import LineDataModule
from imuru_pl.data.synthetic import Writer
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

GAP = 8  # px between images
LABEL_PX = 14  # height of the caption strip above each image
BACKGROUND = (205, 205, 205)
LABEL_COLOUR = (60, 60, 60)


def spread_writers(writers: list[Writer], count: int) -> list[Writer]:
    """`count` writers taken round-robin over font families, so the rows show as many fonts as possible."""

    def order(writer: Writer) -> tuple[int, str]:
        return int(writer.id.rsplit("-", 1)[1]), writer.font

    return sorted(writers, key=order)[:count]


def caption(image: Image.Image, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    """The image with a one-line caption above it (cut to the image's width)."""
    width = max(image.width, 1)
    out = Image.new("RGB", (width, image.height + LABEL_PX), BACKGROUND)
    ImageDraw.Draw(out).text((1, 1), text, fill=LABEL_COLOUR, font=font)
    out.paste(image.convert("RGB"), (0, LABEL_PX))
    return out


def preview_grid(datamodule: LineDataModule, split: str, writers: int, lines_per_writer: int) -> Image.Image:
    """Rows of [style line on paper | target lines on white] for `writers` writers of `split`."""
    if writers < 1 or lines_per_writer < 1:
        raise UserError(
            f"preview.writers and preview.lines_per_writer must be at least 1; "
            f"got {writers} and {lines_per_writer}."
        )
    font = ImageFont.load_default(size=11)
    rows = []
    for writer in spread_writers(datamodule.writers(split), writers):
        style = datamodule.line(writer, 0)
        cells = [caption(Image.fromarray(style.paper_array()), f"{writer.id} style: {style.text}", font)]
        for index in range(1, lines_per_writer + 1):
            line = datamodule.line(writer, index)
            cells.append(caption(Image.fromarray(line.clean_array()), f"target: {line.text}", font))
        rows.append(cells)
    width = max(sum(c.width for c in row) + GAP * (len(row) + 1) for row in rows)
    row_height = LABEL_PX + 64 + GAP
    grid = Image.new("RGB", (width, GAP + row_height * len(rows)), BACKGROUND)
    for r, row in enumerate(rows):
        x = GAP
        for cell in row:
            grid.paste(cell, (x, GAP + r * row_height))
            x += cell.width + GAP
    return grid


def run(cfg: DictConfig) -> dict:
    settings = cfg.get("preview", {})
    datamodule: LineDataModule = instantiate(cfg.data)
    grid = preview_grid(
        datamodule,
        settings.get("split", "train"),
        int(settings.get("writers", 8)),
        int(settings.get("lines_per_writer", 2)),
    )
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "preview.png"
    grid.save(path)
    log.info("Preview of %d writers written to %s", grid.height // (LABEL_PX + 64 + GAP), path)
    return {"preview": str(path)}
