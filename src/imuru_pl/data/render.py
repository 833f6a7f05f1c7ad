"""Ink masks of text lines: one writer's font, size, weight, slant and spacing, 64 px high.

A line is drawn once as an ink coverage mask (uint8, 255 = full ink); `compose.py` turns the same mask into
the clean target and the paper-style image, so both are pixel-aligned. Glyphs are drawn at twice the final
resolution and reduced, which keeps thin strokes smooth after shearing and stretching.

The font size of a writer is fixed from the tallest and deepest glyph of the whole alphabet (not of the line),
so every line of a writer has the same scale and baseline and no glyph is ever clipped at the top or bottom.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
from PIL import Image

from imuru_pl.data.batch import LINE_HEIGHT
from imuru_pl.data.fonts import FontFamily, glyph_array, ink_extent, load_font, missing_chars
from imuru_pl.errors import UserError

SUPERSAMPLE = 2
EDGE_PX = 1  # final px kept free above and below the tallest/deepest glyph
SIDE_PX = 4  # final px of paper left and right of the ink
STATIC_BOLDING = 0.6  # final px of extra pen width at weight 1 for fonts that cannot change weight
JITTER_CLIP = 2.0  # word offsets are clipped at this many standard deviations
MIN_SPACE_EM = 0.25  # some script fonts have hair-thin spaces; words never sit closer than this

INKS = (
    (22, 22, 28),
    (28, 42, 118),
    (18, 28, 78),
    (66, 42, 28),
    (70, 70, 76),
)  # black, blue, navy, brown, pencil
PAPERS = ((252, 252, 250), (247, 241, 224), (240, 232, 212), (229, 229, 227), (236, 240, 247))


@dataclass(frozen=True)
class WriterStyle:
    """Rendering parameters that make one writer out of a font; fixed per writer, shared by all its lines."""

    weight: float  # 0..1 light to bold: the font's weight axis or face when it has one, else a thicker pen
    pen_width: float  # final px of stroke added around glyph outlines
    slant: float  # horizontal shear per px above the baseline (tan of the lean); > 0 leans right
    width: float  # horizontal stretch of the letters
    letter_spacing: float  # final px added between letters
    word_spacing: float  # multiple of the font's space width
    size: float  # fraction of the largest size whose glyphs fit the line height
    baseline_jitter: float  # final px standard deviation of each word's vertical offset
    ink_rgb: tuple[int, int, int]  # ink colour on paper; its luminance is the ink gray of the clean target
    paper_rgb: tuple[int, int, int]
    paper_texture: float  # amplitude of the paper's low-frequency shading, as a fraction of its brightness
    noise: float  # standard deviation of the paper's per-pixel grain, as a fraction of 255

    @property
    def ink_gray(self) -> int:
        r, g, b = self.ink_rgb
        return int(round(0.299 * r + 0.587 * g + 0.114 * b))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StyleRanges:
    """Uniform ranges the writer parameters are drawn from (config: `data.style`)."""

    weight: tuple[float, float] = (0.0, 1.0)
    pen_width: tuple[float, float] = (0.0, 0.5)
    slant: tuple[float, float] = (-0.12, 0.28)
    width: tuple[float, float] = (0.85, 1.15)
    letter_spacing: tuple[float, float] = (-0.5, 1.5)
    word_spacing: tuple[float, float] = (0.7, 1.5)
    size: tuple[float, float] = (0.65, 1.0)
    baseline_jitter: tuple[float, float] = (0.0, 1.2)
    ink_darkness: tuple[float, float] = (0.6, 1.3)  # scales the ink colour (lower = darker)
    paper_texture: tuple[float, float] = (0.0, 0.06)
    noise: tuple[float, float] = (0.0, 0.035)
    plain_paper: float = 0.3  # share of writers on plain white paper without texture or grain

    @classmethod
    def from_config(cls, values: dict | None, base: StyleRanges | None = None, key: str = "data.style"
                    ) -> StyleRanges:
        """Ranges from a config mapping; keys it leaves out keep `base`'s ranges (the defaults without one)."""
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"Unknown writer style key(s) in {key}: {', '.join(sorted(unknown))}.")
        parsed = {}
        for name, value in values.items():
            if name == "plain_paper":
                parsed[name] = float(value)
                continue
            lo, hi = (float(v) for v in value)
            if lo > hi:
                raise UserError(f"{key}.{name} must be [low, high] with low <= high; got {list(value)}.")
            parsed[name] = (lo, hi)
        return replace(base or cls(), **parsed)

    def sample(self, rng: np.random.Generator) -> WriterStyle:
        def draw(key: str) -> float:
            lo, hi = getattr(self, key)
            return float(rng.uniform(lo, hi))

        values = {
            k: draw(k)
            for k in (
                "weight",
                "pen_width",
                "slant",
                "width",
                "letter_spacing",
                "word_spacing",
                "size",
                "baseline_jitter",
            )
        }
        darkness = draw("ink_darkness")
        ink = INKS[int(rng.integers(len(INKS)))]
        ink_rgb = tuple(int(min(200, c * darkness)) for c in ink)
        texture, noise = draw("paper_texture"), draw("noise")
        if rng.random() < self.plain_paper:
            paper, texture, noise = PAPERS[0], 0.0, 0.0
        else:
            base = PAPERS[int(rng.integers(len(PAPERS)))]
            shade = rng.uniform(-6, 3)
            paper = tuple(int(np.clip(c + shade, 0, 255)) for c in base)
        return WriterStyle(**values, ink_rgb=ink_rgb, paper_rgb=paper, paper_texture=texture, noise=noise)


class Pen:
    """Draws ink masks of any text in one writer's hand; the font, size and glyph shapes are fixed once."""

    def __init__(self, family: FontFamily, style: WriterStyle, alphabet: str):
        self.family, self.style = family, style
        face, axis_value = family.face_for(style.weight)
        bolding = 0.0 if family.adjustable_weight else style.weight * STATIC_BOLDING
        self.stroke = (style.pen_width + bolding) * SUPERSAMPLE
        self.height = LINE_HEIGHT * SUPERSAMPLE
        self.jitter_bound = JITTER_CLIP * style.baseline_jitter * SUPERSAMPLE
        # a capital and a descender always take part, so that even a digits-only alphabet sits naturally
        fitted = alphabet + "".join(c for c in "Mg" if not missing_chars(family, c))
        self.font = self._fit_font(face.path, axis_value, fitted)
        rise, drop = ink_extent(self.font, fitted, self.stroke)
        self.baseline = (self.height - rise - drop) / 2 + rise
        self.space = max(self.font.getlength(" "), MIN_SPACE_EM * self.font.size) * style.word_spacing
        self.spacing = style.letter_spacing * SUPERSAMPLE
        self._glyphs: dict[str, tuple[np.ndarray, int, int]] = {}
        self._advances: dict[str, float] = {}
        self._kerning: dict[str, float] = {}

    def _fit_font(self, path: str, axis_value: float | None, alphabet: str):
        """The font at `style.size` times the largest size whose glyphs fit the line with edges and jitter."""
        room = self.height - 2 * (EDGE_PX * SUPERSAMPLE + self.jitter_bound + self.stroke)
        reference = 100.0
        rise, drop = ink_extent(load_font(path, reference, axis_value), alphabet)
        size = reference * room / (rise + drop) * self.style.size
        for _ in range(50):  # glyph extents do not scale exactly linearly (hinting): shrink until they fit
            font = load_font(path, round(size, 1), axis_value)
            rise, drop = ink_extent(font, alphabet, self.stroke)
            if rise + drop + 2 * (EDGE_PX * SUPERSAMPLE + self.jitter_bound) <= self.height:
                return font
            size *= 0.98
        raise UserError(f"The font {path} has glyphs too tall to fit a {LINE_HEIGHT} px line.")

    def _glyph(self, char: str) -> tuple[np.ndarray, int, int]:
        """The glyph leaned and stretched once (cached), with its offset from the pen on the baseline."""
        if char not in self._glyphs:
            self._glyphs[char] = lean_and_stretch(
                *glyph_array(self.font, char, self.stroke), self.style.slant, self.style.width
            )
        return self._glyphs[char]

    def _advance(self, char: str) -> float:
        if char not in self._advances:
            self._advances[char] = self.font.getlength(char)
        return self._advances[char]

    def _kern(self, pair: str) -> float:
        """Kerning between two letters as the font's shaping applies it inside a word."""
        if pair not in self._kerning:
            self._kerning[pair] = self.font.getlength(pair) - self._advance(pair[0]) - self._advance(pair[1])
        return self._kerning[pair]

    def check(self, text: str) -> None:
        missing = missing_chars(self.family, text)
        if missing:
            raise UserError(
                f"The font {self.family.name} cannot write {''.join(sorted(missing))!r} in the text {text!r}."
            )

    def draw(self, text: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The ink coverage of `text` (uint8, 64 x w, 255 = ink; `rng` moves words off the baseline a little)
        and where each of its letters starts.

        Letter starts (float32, one per character of `" ".join(text.split())`, spaces included) are the pen
        positions on the baseline in px of the final mask: letter i owns the columns from its start to the
        next letter's start (a space owns the gap between two words). They are what `model.letters`
        learns the text-to-column alignment from.
        """
        words = text.split()
        if not words:
            raise UserError("Cannot render an empty text; give at least one visible character.")
        placed: list[tuple[np.ndarray, int, int]] = []  # glyph, left x, top y (supersampled px)
        pens: list[float] = []  # pen x of every character, spaces included (supersampled px)
        x = word_end = 0.0
        for w, word in enumerate(words):
            if w:  # the space between two words starts where the last word's pen stopped
                pens.append(word_end * self.style.width)
            dy = float(np.clip(rng.normal(0.0, 1.0), -JITTER_CLIP, JITTER_CLIP)) * self.style.baseline_jitter
            y = round(self.baseline + dy * SUPERSAMPLE)
            for i, char in enumerate(word):
                if i:
                    x += self._kern(word[i - 1] + char) + self.spacing
                glyph, left, top = self._glyph(char)
                pens.append(x * self.style.width)
                placed.append((glyph, round(x * self.style.width) + left, y + top))
                x += self._advance(char)
            word_end = x
            x += self.space + self.spacing
        return self._rasterise(placed, np.asarray(pens, dtype=np.float64))

    def _rasterise(self, placed: list[tuple[np.ndarray, int, int]],
                   pens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Paste the glyphs (maximum where strokes overlap), reduce to 64 px, keep the inked columns; the pen
        positions follow the same scaling and crop.

        Glyphs of the fitted alphabet always fit the line; a taller character from outside it (only possible
        in `render` of arbitrary text) makes the whole line drawn taller and scaled down: never clipped.
        """
        x0 = min(px for _, px, _ in placed)
        x1 = max(px + g.shape[1] for g, px, _ in placed)
        y0 = min(0, min(py for _, _, py in placed))
        y1 = max(self.height, max(py + g.shape[0] for g, _, py in placed))
        width = x1 - x0 + (-(x1 - x0)) % SUPERSAMPLE
        canvas = np.zeros((y1 - y0, width), dtype=np.uint8)
        for glyph, px, py in placed:
            h, w = glyph.shape
            region = canvas[py - y0 : py - y0 + h, px - x0 : px - x0 + w]
            np.maximum(region, glyph, out=region)
        image = Image.fromarray(canvas)
        if image.height == self.height:
            image, scale = image.reduce(SUPERSAMPLE), 1.0 / SUPERSAMPLE
        else:
            scale = LINE_HEIGHT / image.height
            image = image.resize((max(1, round(image.width * scale)), LINE_HEIGHT), Image.Resampling.BOX)
        mask = np.asarray(image)
        ink_columns = np.flatnonzero(mask.max(axis=0))
        if ink_columns.size == 0:
            raise UserError("The text draws no ink with this font.")
        left, right = ink_columns[0], ink_columns[-1] + 1
        out = np.zeros((LINE_HEIGHT, right - left + 2 * SIDE_PX), dtype=np.uint8)
        out[:, SIDE_PX : SIDE_PX + right - left] = mask[:, left:right]
        starts = (pens - x0) * scale - left + SIDE_PX
        starts = np.maximum.accumulate(np.clip(starts, 0.0, out.shape[1]))  # never before the line or backwards
        return out, starts.astype(np.float32)


def lean_and_stretch(
    glyph: np.ndarray, left: int, top: int, slant: float, stretch: float
) -> tuple[np.ndarray, int, int]:
    """Shear a glyph around the baseline (x' = stretch * x - slant * y, y below the baseline > 0).

    Done per glyph (and cached) instead of per line: the line is then a plain paste of glyphs.
    """
    h, w = glyph.shape
    corners = [stretch * x - slant * y for x in (left, left + w) for y in (top, top + h)]
    new_left, new_right = math.floor(min(corners)), math.ceil(max(corners))
    # output (X, Y) samples the glyph at x = (X + new_left + slant * (Y + top)) / stretch - left, y = Y
    coefficients = (1 / stretch, slant / stretch, (new_left + slant * top) / stretch - left, 0.0, 1.0, 0.0)
    image = Image.fromarray(glyph).transform(
        (new_right - new_left, h), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(image), new_left, top
