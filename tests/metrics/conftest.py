"""Synthetic writers for the metric tests: a writer is a handwriting font, lines are rendered with PIL."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from imuru_pl.metrics import Item

# Three fonts of distinct look (print, casual, script) for the style tests.
WRITERS = ("delius", "kalam", "great_vibes")
# Fonts the bundled OCR reads with CER 0.000 on 100 lines each (docs/evaluation.md).
OCR_FONTS = ("delius", "kalam", "caveat")
TEXTS_A = (
    "the quick brown fox",
    "Jumps over the lazy dog",
    "Handwriting is hard to fake",
    "seven silver spoons",
)
TEXTS_B = (
    "a morning walk by the river",
    "Please call me tomorrow",
    "Forty lines of text",
    "green apples and pears",
)


def font_file(writer: str) -> Path:
    """The regular TTF of a `fontpkg-<writer>` package."""
    files = sorted((importlib.import_module(f"fontpkg_{writer}").ROOT / "files").glob("*.ttf"))
    regular = [f for f in files if "Regular" in f.name]
    return (regular or files)[0]


def render_line(text: str, writer: str, height: int = 64, size: int = 48) -> Image.Image:
    """Black text on white, cropped to the ink plus a margin, scaled to `height` (as the dataset's lines)."""
    font = ImageFont.truetype(str(font_file(writer)), size)
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (right - left + 16, bottom - top + 16), 255)
    ImageDraw.Draw(image).text((8 - left, 8 - top), text, font=font, fill=0)
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), Image.Resampling.BILINEAR).convert("RGB")


def make_items(
    texts: tuple[str, ...], writers: tuple[str, ...] = WRITERS, label: dict[str, str] | None = None
) -> list[Item]:
    """Every text in every writer's font; `label` renames writers (font -> writer id) to build mismatches."""
    label = label or {}
    return [
        Item(writer=label.get(w, w), image=render_line(t, w), text=t, name=f"{i:02d}")
        for w in writers
        for i, t in enumerate(texts)
    ]


@pytest.fixture(scope="session")
def set_a() -> list[Item]:
    return make_items(TEXTS_A)


@pytest.fixture(scope="session")
def set_b() -> list[Item]:
    return make_items(TEXTS_B)


@pytest.fixture(scope="session")
def lines():
    """The helpers and constants above, for test modules (test files cannot import conftest)."""

    class Lines:
        writers = WRITERS
        ocr_fonts = OCR_FONTS
        texts_a = TEXTS_A
        texts_b = TEXTS_B
        render = staticmethod(render_line)
        items = staticmethod(make_items)
        font_file = staticmethod(font_file)

    return Lines
