"""The embedded synthetic handwriting: writers made from fonts, and their lines, reproducible from a seed.

A writer is a font family plus rendering parameters (`WriterStyle`) drawn from a generator seeded by the
writer's id, so a writer does not change when other fonts are added. Line `i` of a writer is drawn from a
generator seeded by (seed, writer, i): any line can be re-created alone, in any order, in any process.

Splits are by writer. With enough families, whole families are held out for validation and test ("unseen
writer" then means an unseen font); otherwise each family gives its last two writers to validation and test.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import PIL
from PIL import features
from torch import Tensor

from imuru_pl.data.compose import clean, on_paper, to_tensor
from imuru_pl.data.fonts import FontFamily, coverage, discover_families, missing_chars
from imuru_pl.data.render import Pen, StyleRanges, WriterStyle
from imuru_pl.data.text import DEFAULT_CHARSET, FileSource, build_text_source, drop_last_word
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
RENDER_VERSION = 1  # bump when a change to rendering changes pixels (invalidates on-disk caches)
MAX_TEXT_TRIES = 200  # texts drawn for one line before giving up (missing glyphs, too wide)
DEFAULT_FONT_PACKAGES = (
    "fontpkg_caveat",
    "fontpkg_dancing_script",
    "fontpkg_delius",
    "fontpkg_great_vibes",
    "fontpkg_indie_flower",
    "fontpkg_kalam",
    "fontpkg_permanent_marker",
    "fontpkg_satisfy",
    "fontpkg_shadows_into_light",
    "fontpkg_yellowtail",
    "fontpkg_zeyada",
)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts; unlike hash(), the same in every process and run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def paper_seed(line_key: str) -> int:
    """Seed of a line's paper shading and grain: the same wherever the line is composed."""
    return stable_seed("paper", line_key)


@dataclass(frozen=True)
class Writer:
    """One synthetic writer: a font family and the rendering parameters that make its hand."""

    id: str  # "<family>-<n>", e.g. "kalam-2"
    family: FontFamily
    style: WriterStyle
    split: str

    @property
    def font(self) -> str:
        return self.family.name


@dataclass
class RenderedLine:
    """One line as an ink mask; `clean` and `styled` are its two pixel-aligned versions."""

    text: str
    writer: Writer
    mask: np.ndarray  # uint8 (64, w), 255 = ink
    key: str  # stable id of this line (latent cache keys add "/clean" or "/paper")
    starts: np.ndarray  # float32 px where each letter of `text` starts (`Pen.draw`)

    def clean_array(self) -> np.ndarray:
        return clean(self.mask, self.writer.style)

    def paper_array(self) -> np.ndarray:
        return on_paper(self.mask, self.writer.style, np.random.default_rng(paper_seed(self.key)))

    @property
    def clean(self) -> Tensor:
        """(1, 64, w) in [-1, 1]: the writer's ink on white, as a target."""
        return to_tensor(self.clean_array())

    @property
    def styled(self) -> Tensor:
        """(3, 64, w) in [-1, 1]: the same ink on the writer's paper, as a style image."""
        return to_tensor(self.paper_array())


def split_families(
    names: list[str], val_fonts: int | list[str], test_fonts: int | list[str], seed: int
) -> dict[str, str] | None:
    """family -> split when whole families can be held out; None when there are too few families."""
    named = {s: list(v) for s, v in (("val", val_fonts), ("test", test_fonts)) if not isinstance(v, int)}
    counts = {s: v for s, v in (("val", val_fonts), ("test", test_fonts)) if isinstance(v, int)}
    for split, count in counts.items():
        if count < 1:
            raise UserError(
                f"data.{split}_fonts must be at least 1 (or a list of font family names); got {count}."
            )
    for split, chosen in named.items():
        unknown = set(chosen) - set(names)
        if unknown or not chosen:
            raise UserError(
                f"data.{split}_fonts names {sorted(unknown) or 'no family'}; "
                f"available families: {', '.join(names)}."
            )
    taken = [n for chosen in named.values() for n in chosen]
    if len(set(taken)) != len(taken):
        raise UserError("data.val_fonts and data.test_fonts must name different font families.")
    free = [n for n in names if n not in taken]
    if len(free) < sum(counts.values()) + 1:
        if named:
            raise UserError("data.val_fonts/test_fonts leave no font family for training.")
        return None
    order = [free[i] for i in np.random.default_rng(stable_seed(seed, "holdout")).permutation(len(free))]
    for split, count in counts.items():
        named[split], order = order[:count], order[count:]
    assignment = {name: "train" for name in names}
    assignment.update({name: split for split, chosen in named.items() for name in chosen})
    return assignment


def build_writers(
    families: list[FontFamily],
    writers_per_font: int,
    val_fonts: int | list[str],
    test_fonts: int | list[str],
    seed: int,
    ranges: StyleRanges,
    train_ranges: StyleRanges | None = None,
) -> dict[str, list[Writer]]:
    """Writers of every split; each writer's style is drawn from a generator seeded by its id, from
    `train_ranges` for training writers when given (the draws are the same, so a parameter whose range is
    not changed keeps its value)."""
    if writers_per_font < 1:
        raise UserError(f"data.writers_per_font must be at least 1; got {writers_per_font}.")
    assignment = split_families([f.name for f in families], val_fonts, test_fonts, seed)
    if assignment is None and writers_per_font < 3:
        raise UserError(
            f"With only {len(families)} font famil{'y' if len(families) == 1 else 'ies'}, validation "
            "and test writers come from each family's last two writers: data.writers_per_font must be "
            f"at least 3; got {writers_per_font}."
        )
    writers: dict[str, list[Writer]] = {s: [] for s in SPLITS}
    for family in families:
        for index in range(writers_per_font):
            writer_id = f"{family.name}-{index}"
            if assignment is not None:
                split = assignment[family.name]
            else:
                split = {writers_per_font - 2: "val", writers_per_font - 1: "test"}.get(index, "train")
            drawn_from = train_ranges if split == "train" and train_ranges is not None else ranges
            style = drawn_from.sample(np.random.default_rng(stable_seed(seed, "writer", writer_id)))
            writers[split].append(Writer(writer_id, family, style, split))
    rule = "whole font families" if assignment is not None else "the last two writers of each family"
    log.info(
        "Writers: %s (validation/test hold out %s).",
        ", ".join(f"{len(v)} {k}" for k, v in writers.items()),
        rule,
    )
    return writers


class SyntheticHandwriting:
    """Writers and lines of the synthetic data; every line is reproducible from (seed, writer, index)."""

    def __init__(
        self,
        seed: int = 0,
        fonts: list[str] | tuple[str, ...] = DEFAULT_FONT_PACKAGES,
        font_dirs: list[str] | tuple[str, ...] = (),
        text_file: str | None = None,
        charset: str = DEFAULT_CHARSET,
        vocabulary_size: int = 5000,
        frequency_power: float = 0.5,
        words_per_line: tuple[int, int] = (2, 6),
        writers_per_font: int = 5,
        val_fonts: int | list[str] = 1,
        test_fonts: int | list[str] = 2,
        max_width: int | None = 512,
        style: dict | None = None,
        train_style: dict | None = None,
    ):
        low, high = (int(v) for v in words_per_line)
        if not 1 <= low <= high:
            raise UserError(
                f"data.words_per_line must be [min, max] with 1 <= min <= max; got {list(words_per_line)}."
            )
        if max_width is not None and max_width < 16:
            raise UserError(f"data.max_width must be at least 16 px (or null); got {max_width}.")
        self.seed, self.words_per_line, self.max_width = int(seed), (low, high), max_width
        self.families = discover_families(list(fonts), list(font_dirs))
        if not self.families:
            raise UserError(
                "No font given: set data.fonts (font packages) or data.font_dirs (folders of fonts)."
            )
        self.source = build_text_source(text_file, vocabulary_size, frequency_power, charset)
        self.ranges = StyleRanges.from_config(style)
        self.train_ranges = StyleRanges.from_config(train_style, base=self.ranges, key="data.train_style")
        self.writers = build_writers(
            self.families, writers_per_font, val_fonts, test_fonts, self.seed, self.ranges, self.train_ranges
        )
        self._by_id = {w.id: w for split in self.writers.values() for w in split}
        self._alphabets = {f.name: coverage(f, self.source.alphabet) for f in self.families}
        for family, alphabet in self._alphabets.items():
            if len(alphabet) < len(self.source.alphabet):
                lacking = "".join(sorted(set(self.source.alphabet) - set(alphabet)))
                log.info(
                    "Font %s lacks %r: lines with those characters are re-drawn for its writers.",
                    family,
                    lacking[:40],
                )
        self._pens: dict[str, Pen] = {}
        self._config = (
            seed,
            [
                (f.name, [(Path(x.path).name, Path(x.path).stat().st_size) for x in f.faces])
                for f in self.families
            ],
            self._text_identity(text_file, vocabulary_size, frequency_power, charset),
            (low, high),
            max_width,
            self.ranges,
            self.train_ranges,
            writers_per_font,
            val_fonts,
            test_fonts,
        )

    @staticmethod
    def _text_identity(
        text_file: str | None, vocabulary_size: int, frequency_power: float, charset: str
    ) -> tuple:
        if text_file:
            return ("file", hashlib.sha256(Path(text_file).expanduser().read_bytes()).hexdigest())
        return ("wordfreq", vocabulary_size, frequency_power, charset)

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of everything that decides the pixels: names cache files and latent cache keys."""
        versions = (RENDER_VERSION, PIL.__version__, features.version("freetype2"), features.version("raqm"))
        return hashlib.blake2b(repr((self._config, versions)).encode(), digest_size=6).hexdigest()

    def writer(self, writer_id: str) -> Writer:
        if writer_id not in self._by_id:
            raise UserError(
                f"Unknown synthetic writer {writer_id!r}; writers look like {next(iter(self._by_id))!r}."
            )
        return self._by_id[writer_id]

    def pen(self, writer: Writer) -> Pen:
        if writer.id not in self._pens:
            self._pens[writer.id] = Pen(writer.family, writer.style, self._alphabets[writer.font])
        return self._pens[writer.id]

    def line(self, writer: Writer | str, index: int) -> RenderedLine:
        """Line `index` of a writer's own data: text that the font can write and that fits `max_width`.

        A line wider than `max_width` loses trailing words (and is drawn again, so image and text agree);
        a single word that is still too wide is replaced by a newly drawn text.
        """
        writer = self.writer(writer) if isinstance(writer, str) else writer
        pen, alphabet = self.pen(writer), set(self._alphabets[writer.font]) | {" "}
        rng = np.random.default_rng(stable_seed(self.seed, "line", writer.id, index))
        for _ in range(MAX_TEXT_TRIES):
            text: str | None = self.source.sample(
                rng, int(rng.integers(self.words_per_line[0], self.words_per_line[1] + 1))
            )
            if not set(text) <= alphabet:
                continue
            while text is not None:
                mask, starts = pen.draw(text, rng)
                if self.max_width is None or mask.shape[1] <= self.max_width:
                    key = f"syn-{self.fingerprint}/{writer.id}/{index:05d}"
                    return RenderedLine(" ".join(text.split()), writer, mask, key, starts)
                text = drop_last_word(text)
        source = (
            f"the text file {self.source.path}" if isinstance(self.source, FileSource) else "the word list"
        )
        raise UserError(
            f"No text from {source} fits writer {writer.id} (font {writer.font}, "
            f"data.max_width={self.max_width}) in {MAX_TEXT_TRIES} tries."
        )

    def render(self, text: str, writer: Writer | str, seed: int = 0) -> RenderedLine:
        """Any text in a writer's hand (no width limit): "real" lines for evaluation and previews."""
        writer = self.writer(writer) if isinstance(writer, str) else writer
        text = " ".join(text.split())
        pen = self.pen(writer)
        pen.check(text)
        rng = np.random.default_rng(stable_seed(self.seed, "render", writer.id, text, seed))
        mask, starts = pen.draw(text, rng)
        text_id = hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
        key = f"render-{self.fingerprint}/{writer.id}/{text_id}/{seed}"
        return RenderedLine(text, writer, mask, key, starts)

    def missing(self, text: str, writer: Writer | str) -> set[str]:
        """Characters of `text` the writer's font cannot draw."""
        writer = self.writer(writer) if isinstance(writer, str) else writer
        return missing_chars(writer.family, text)
