"""Sample k of the synthetic stream, rendered: a pure function of (seed, k) (`data=synthetic_stream`).

Sample k draws, from a generator seeded by (seed, k) alone, a font entry (a training font family, or one
file of the extra font folders, opened on first use and kept in a bounded per-process cache), a writer's
rendering parameters (as `synthetic.py` draws a writer, from `data.train_style` over `data.style`) and two
different texts; the style is the first text on the writer's paper, the target the second on white. Each
sample is its own writer. How the samples are split, resumed and batched: `stream.py`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from imuru_pl.data.batch import LineSample
from imuru_pl.data.compose import clean, on_paper, to_tensor
from imuru_pl.data.fonts import FontFace, FontFamily, _describe, coverage, slugify
from imuru_pl.data.render import Pen, StyleRanges, WriterStyle
from imuru_pl.data.streaming import SkipCounts
from imuru_pl.data.synthetic import MAX_TEXT_TRIES, paper_seed
from imuru_pl.data.text import TextSource, drop_last_word
from imuru_pl.errors import UserError

STREAM_TAG = 0x5712EA  # mixed into every sample's seed: the stream's draws differ from the fixed lines'
SKIP_REASONS = ("too_wide", "shortened", "unusable_font", "no_text")
TOO_WIDE = ("drop", "shorten")


@dataclass
class StreamPair:
    """One rendered stream sample: its ink masks, texts and ids; the images (uint8, what shards store) are
    composed on first use, so a loader composes only those its pairing reads."""

    index: int
    writer: str
    font: str
    style_text: str
    text: str
    hand: WriterStyle
    style_mask: np.ndarray  # (64, w) ink coverage of the style line
    target_mask: np.ndarray  # (64, w') ink coverage of the target line
    target_starts: np.ndarray
    style_key: str
    target_key: str

    @cached_property
    def style_rgb(self) -> np.ndarray:
        """(64, w, 3) the style line on the writer's paper."""
        return on_paper(self.style_mask, self.hand, np.random.default_rng(paper_seed(self.style_key)))

    @cached_property
    def target_gray(self) -> np.ndarray:
        """(64, w') the target line clean on white."""
        return clean(self.target_mask, self.hand)

    @cached_property
    def target_rgb(self) -> np.ndarray:
        """(64, w', 3) the target line on the writer's paper (the VAE stage's same-line pairs)."""
        return on_paper(self.target_mask, self.hand, np.random.default_rng(paper_seed(self.target_key)))

    def sample(self, pairing: str = "other_line") -> LineSample:
        if pairing == "same_line":  # the VAE stage: paper and clean render of the same (target) line
            style, style_text, style_key = self.target_rgb, self.text, f"{self.target_key}/paper"
        else:
            style, style_text, style_key = self.style_rgb, self.style_text, f"{self.style_key}/paper"
        return LineSample(style=to_tensor(style), target=to_tensor(self.target_gray), text=self.text,
                          writer=self.writer, style_text=style_text, style_key=style_key,
                          target_key=f"{self.target_key}/clean",
                          target_starts=torch.from_numpy(self.target_starts.copy()))


def sample_index(key: str) -> int:
    """The stream index of a stream sample's style or target key (`stream-<fp>/<writer>/<k>t/clean`)."""
    return int(key.split("/")[2][:-1])


class StreamRenderer:
    """Renders sample k of the stream; picklable (its font cache is per process and not pickled)."""

    def __init__(self, seed: int, families: list[FontFamily], extra_files: list[str], held_out: set[str],
                 source: TextSource, ranges: StyleRanges, words_per_line: tuple[int, int],
                 max_width: int | None, too_wide: str, fingerprint: str, font_cache: int = 256,
                 alphabets: dict[str, str] | None = None):
        if too_wide not in TOO_WIDE:
            raise UserError(f"data.too_wide must be one of {', '.join(TOO_WIDE)}; got {too_wide!r}.")
        self.seed, self.families, self.extra_files = int(seed), list(families), list(extra_files)
        self.held_out, self.source, self.ranges = set(held_out), source, ranges
        self.words_per_line, self.max_width, self.too_wide = words_per_line, max_width, too_wide
        self.fingerprint, self.font_cache = fingerprint, max(1, int(font_cache))
        self._alphabets = dict(alphabets or {})  # already known coverage of the named families
        self._fonts: OrderedDict[int, tuple[FontFamily, str] | None] = OrderedDict()
        if not self.families and not self.extra_files:
            raise UserError("The stream has no training font: every font family is held out for validation "
                            "and test; add fonts (data.fonts, data.font_dirs or data.system_font_dirs).")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fonts"] = OrderedDict()
        return state

    @property
    def entries(self) -> int:
        return len(self.families) + len(self.extra_files)

    def font(self, entry: int) -> tuple[FontFamily, str] | None:
        """(family, the characters of the text source it can draw) of a font entry, opened once per process
        (a bounded LRU cache); None for a file that cannot be used (unreadable, held out, too few letters)."""
        if entry in self._fonts:
            self._fonts.move_to_end(entry)
            return self._fonts[entry]
        found = self._open(entry)
        self._fonts[entry] = found
        if len(self._fonts) > self.font_cache:
            self._fonts.popitem(last=False)
        return found

    def _open(self, entry: int) -> tuple[FontFamily, str] | None:
        if entry < len(self.families):
            family = self.families[entry]
            if family.name not in self._alphabets:
                self._alphabets[family.name] = coverage(family, self.source.alphabet)
            return family, self._alphabets[family.name]
        path = self.extra_files[entry - len(self.families)]
        try:
            name, face = _describe(Path(path))
        except Exception:  # noqa: BLE001 - any unreadable font file is left out, not fatal
            return None
        name = slugify(name)
        if name in self.held_out:
            return None
        family = FontFamily(name, (FontFace(face.path, face.weight, face.weight_axis),))
        try:
            alphabet = coverage(family, self.source.alphabet)
        except Exception:  # noqa: BLE001
            return None
        letters = {c for c in self.source.alphabet if c.isalpha() and c.islower()}
        if not letters <= set(alphabet):
            return None  # a symbol font, or one without the source's lower-case letters
        return family, alphabet

    def _text(self, rng: np.random.Generator, alphabet: set[str], other: str | None) -> str | None:
        low, high = self.words_per_line
        for _ in range(MAX_TEXT_TRIES):
            text = " ".join(self.source.sample(rng, int(rng.integers(low, high + 1))).split())
            if text and set(text) <= alphabet and text != other:
                return text
        return None

    def _draw(self, pen: Pen, text: str, rng: np.random.Generator,
              counts: SkipCounts | None) -> tuple[str, np.ndarray, np.ndarray] | None:
        """(text, mask, starts) of a line no wider than max_width, or None (counted as too wide)."""
        current: str | None = text
        while current is not None:
            mask, starts = pen.draw(current, rng)
            if self.max_width is None or mask.shape[1] <= self.max_width:
                if current != text and counts is not None:
                    counts.add("shortened")
                return current, mask, starts
            current = drop_last_word(current) if self.too_wide == "shorten" else None
        return None

    def render(self, k: int, counts: SkipCounts | None = None) -> StreamPair | None:
        """Sample k, or None when it is dropped (the reason is counted in `counts`)."""
        rng = np.random.default_rng([STREAM_TAG, self.seed, int(k)])
        entry = int(rng.integers(self.entries))
        found = self.font(entry)
        if found is None:
            counts is not None and counts.add("unusable_font", f"font entry {entry} (sample {k})")
            return None
        family, alphabet = found
        style: WriterStyle = self.ranges.sample(rng)
        try:
            pen = Pen(family, style, alphabet)
        except UserError as err:
            counts is not None and counts.add("unusable_font", str(err))
            return None
        allowed = set(alphabet) | {" "}
        style_text = self._text(rng, allowed, None)
        target_text = self._text(rng, allowed, style_text) if style_text is not None else None
        if target_text is None:
            counts is not None and counts.add("no_text", f"font {family.name} (sample {k})")
            return None
        drawn_style = self._draw(pen, style_text, rng, counts)
        drawn_target = self._draw(pen, target_text, rng, counts) if drawn_style is not None else None
        if drawn_style is None or drawn_target is None or drawn_style[0] == drawn_target[0]:
            counts is not None and counts.add("too_wide")
            return None
        (style_text, style_mask, _), (target_text, target_mask, starts) = drawn_style, drawn_target
        writer = f"{family.name}-k{k}"
        base = f"stream-{self.fingerprint}/{writer}/{k:012d}"
        style_key, target_key = f"{base}s", f"{base}t"
        return StreamPair(index=int(k), writer=writer, font=family.name, style_text=style_text, text=target_text,
                          hand=style, style_mask=style_mask, target_mask=target_mask, target_starts=starts,
                          style_key=style_key, target_key=target_key)
