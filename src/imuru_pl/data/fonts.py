"""Handwriting-like fonts: discover families, load faces at a weight, and tell which characters they lack.

A family is what a user calls a font ("Kalam"); it may ship several files (static weights) or one variable
file with a weight axis. Missing glyphs are detected by rendering: a character the font lacks is drawn as the
font's `.notdef` glyph (a tofu box, or nothing), so any non-blank character whose mask equals `.notdef`'s, or
that draws no ink at all, is treated as missing and never sampled for that font.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

FONT_SUFFIXES = (".ttf", ".otf")
# A code point that no font maps (last private-use code point of plane 16): it always renders as `.notdef`.
NOTDEF_PROBE = "\U0010fffd"
PROBE_SIZE = 48  # px; glyph comparisons are done at this size


@dataclass(frozen=True)
class FontFace:
    """One font file. `weight` is its nominal CSS weight; `weight_axis` the (min, max) of a variable font."""

    path: str
    weight: int
    weight_axis: tuple[float, float] | None = None


@dataclass(frozen=True)
class FontFamily:
    """All files of one family; writers of the family pick a face (and axis value) by their weight."""

    name: str  # slug used in writer ids, e.g. "indie_flower"
    faces: tuple[FontFace, ...] = field(default_factory=tuple)

    def face_for(self, weight: float) -> tuple[FontFace, float | None]:
        """The face and axis value for a writer weight in [0, 1] (light .. bold).

        Variable faces map the weight onto their axis; families of static files take the nearest weight.
        """
        variable = [f for f in self.faces if f.weight_axis is not None]
        if variable:
            lo, hi = variable[0].weight_axis
            return variable[0], lo + weight * (hi - lo)
        weights = [f.weight for f in self.faces]
        lo, hi = min(weights), max(weights)
        wanted = lo + weight * (hi - lo)
        return min(self.faces, key=lambda f: abs(f.weight - wanted)), None

    @property
    def adjustable_weight(self) -> bool:
        """Whether the font itself can change weight (variable axis or several weights)."""
        return any(f.weight_axis for f in self.faces) or len({f.weight for f in self.faces}) > 1


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "font"


@lru_cache(maxsize=512)
def load_font(path: str, size: float, axis_value: float | None = None) -> ImageFont.FreeTypeFont:
    """A FreeType font at `size` px with its weight axis set (cached: loading parses the file)."""
    try:
        font = ImageFont.truetype(path, size=size)
    except OSError as err:
        raise UserError(f"The font file {path} cannot be read as a TrueType/OpenType font ({err}).") from err
    if axis_value is not None:
        axes = font.get_variation_axes()
        font.set_variation_by_axes(
            [axis_value if _axis_tag(a) == "wght" else a.get("default", a["minimum"]) for a in axes]
        )
    return font


def _axis_tag(axis: dict) -> str:
    name = axis.get("name", b"")
    name = name.decode(errors="ignore") if isinstance(name, bytes) else str(name)
    return "wght" if name.lower() in ("weight", "wght") else name.lower()


def _describe(path: Path) -> tuple[str, FontFace]:
    """(family name, face) of one font file, from the font's own name table."""
    font = load_font(str(path), PROBE_SIZE)
    family_name, style_name = font.getname()
    weight_axis = None
    try:
        for axis in font.get_variation_axes():
            if _axis_tag(axis) == "wght":
                weight_axis = (float(axis["minimum"]), float(axis["maximum"]))
    except OSError:
        pass  # not a variable font
    return family_name or path.stem, FontFace(str(path), _nominal_weight(style_name or ""), weight_axis)


def _nominal_weight(style_name: str) -> int:
    style = style_name.lower()
    for word, weight in (
        ("thin", 100),
        ("extralight", 200),
        ("light", 300),
        ("medium", 500),
        ("semibold", 600),
        ("extrabold", 800),
        ("black", 900),
        ("bold", 700),
    ):
        if word in style.replace(" ", "").replace("-", ""):
            return weight
    return 400


def font_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in FONT_SUFFIXES and p.is_file())


def package_folder(package: str) -> Path:
    """The folder of an installed font package (a module with a `ROOT` path, e.g. `fontpkg_caveat`)."""
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise UserError(f"The font package {package!r} in data.fonts is not installed.") from err
    return Path(getattr(module, "ROOT", Path(module.__file__).parent))


def discover_families(
    packages: list[str] | tuple[str, ...] = (), font_dirs: list[str] | tuple[str, ...] = ()
) -> list[FontFamily]:
    """Font families from installed font packages and user folders, sorted by name.

    Files are grouped by the family name stored in the font, so a folder of static weights is one family.
    """
    sources: list[tuple[str, list[Path]]] = [
        (f"font package {p!r}", font_files(package_folder(p))) for p in packages
    ]
    for folder in font_dirs:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UserError(f"The font directory {folder} in data.font_dirs does not exist "
                            f"(scripts/fetch_fonts.py fetches font families into one).")
        sources.append((f"font directory {folder}", font_files(path)))
    grouped: dict[str, list[FontFace]] = {}
    for source, files in sources:
        if not files:
            raise UserError(f"The {source} holds no .ttf or .otf font file.")
        for path in files:
            family, face = _describe(path)
            grouped.setdefault(slugify(family), []).append(face)
    families = [
        FontFamily(name, tuple(sorted(faces, key=lambda f: (f.weight, f.path))))
        for name, faces in sorted(grouped.items())
    ]
    log.debug("Font families: %s", ", ".join(f.name for f in families))
    return families


def _glyph_mask(font: ImageFont.FreeTypeFont, char: str) -> tuple[tuple[int, int, int, int], bytes]:
    bbox = font.getbbox(char, anchor="ls")
    width, height = max(1, bbox[2] - bbox[0]), max(1, bbox[3] - bbox[1])
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).text((-bbox[0], -bbox[1]), char, font=font, fill=255, anchor="ls")
    return bbox, image.tobytes()


@lru_cache(maxsize=64)
def _notdef(path: str) -> tuple[tuple[int, int, int, int], bytes]:
    return _glyph_mask(load_font(path, PROBE_SIZE), NOTDEF_PROBE)


@lru_cache(maxsize=200_000)
def has_glyph(path: str, char: str) -> bool:
    """Whether the font file draws `char` with a glyph of its own (not `.notdef`, not blank)."""
    if char.isspace():
        return char == " "
    bbox, mask = _glyph_mask(load_font(path, PROBE_SIZE), char)
    if not any(mask):
        return False
    return (bbox, mask) != _notdef(path)


def missing_chars(family: FontFamily, text: str) -> set[str]:
    """Characters of `text` that some face of the family cannot draw."""
    return {c for c in set(text) for face in family.faces if not has_glyph(face.path, c)}


def coverage(family: FontFamily, alphabet: str) -> str:
    """The characters of `alphabet` that every face of the family can draw."""
    return "".join(c for c in alphabet if not missing_chars(family, c))


def ink_extent(font: ImageFont.FreeTypeFont, alphabet: str, stroke_width: float = 0.0) -> tuple[float, float]:
    """(rise above, drop below) the baseline, in px, of the tallest and deepest glyph of `alphabet`."""
    rise, drop = 0.0, 0.0
    for char in set(alphabet) - {" "}:
        left, top, right, bottom = font.getbbox(char, anchor="ls", stroke_width=stroke_width)
        rise, drop = max(rise, -top), max(drop, bottom)
    return rise, drop


def glyph_array(font: ImageFont.FreeTypeFont, char: str, stroke_width: float) -> tuple[np.ndarray, int, int]:
    """A glyph's coverage (uint8, 255 = ink) and its top-left offset from the pen position on the baseline."""
    box = font.getbbox(char, anchor="ls", stroke_width=stroke_width)
    left, top, right, bottom = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    image = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(image).text(
        (-left, -top), char, font=font, fill=255, anchor="ls", stroke_width=stroke_width, stroke_fill=255
    )
    return np.asarray(image), left, top
