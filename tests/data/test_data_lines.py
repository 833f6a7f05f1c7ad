"""Lines: reproducible from the seed, whole (never clipped or cut short), consistent per writer."""

from __future__ import annotations

import numpy as np
import pytest

from imuru_pl.data.synthetic import SyntheticHandwriting
from imuru_pl.data.text import FileSource, WordSource
from imuru_pl.errors import UserError

FONTS = ["fontpkg_caveat", "fontpkg_great_vibes", "fontpkg_kalam", "fontpkg_zeyada"]


def synthetic(seed: int = 7, **overrides) -> SyntheticHandwriting:
    settings = dict(seed=seed, fonts=FONTS, writers_per_font=2, val_fonts=1, test_fonts=1)
    return SyntheticHandwriting(**{**settings, **overrides})


@pytest.fixture(scope="module")
def data() -> SyntheticHandwriting:
    return synthetic()


def all_writers(data: SyntheticHandwriting):
    return [w for split in data.writers.values() for w in split]


def test_same_seed_same_pixels_other_seed_other_pixels(data):
    again, other = synthetic(), synthetic(seed=8)
    for writer in all_writers(data):
        for index in (0, 5):
            a, b = data.line(writer, index), again.line(writer.id, index)
            assert a.text == b.text and np.array_equal(a.mask, b.mask) and a.key == b.key
            assert np.array_equal(a.paper_array(), b.paper_array())
    differs = [
        not np.array_equal(data.line(w, 0).mask, other.line(w.id, 0).mask)
        or data.line(w, 0).text != other.line(w.id, 0).text
        for w in all_writers(data)
    ]
    assert all(differs)
    assert data.fingerprint == again.fingerprint != other.fingerprint


def test_a_writer_does_not_depend_on_the_other_fonts(data):
    alone = synthetic(fonts=["fontpkg_kalam"], writers_per_font=3)
    assert alone.writer("kalam-0").style == data.writer("kalam-0").style


def test_images_are_64_high_in_range_and_never_clipped(data):
    for writer in all_writers(data):
        for index in range(6):
            line = data.line(writer, index)
            clean, paper = line.clean, line.styled
            assert clean.shape[:2] == (1, 64) and paper.shape[:2] == (3, 64)
            assert clean.shape[-1] == paper.shape[-1] == line.mask.shape[1]
            for image in (clean, paper):
                assert image.min() >= -1.0 and image.max() <= 1.0
            assert clean.min() < -0.2  # dark ink
            # no ink touches the image border: glyphs were fitted into the line, not cut
            assert line.mask[[0, -1], :].max() == 0 and line.mask[:, [0, -1]].max() == 0
            # the clean render is white wherever there is no ink
            assert (line.clean_array()[line.mask == 0] == 255).all()


def test_max_width_keeps_whole_texts(data):
    narrow = synthetic(max_width=160, words_per_line=(3, 6))
    for writer in all_writers(narrow):
        for index in range(8):
            line = narrow.line(writer, index)
            assert line.mask.shape[1] <= 160
            # the image holds the full text: the same text drawn with no width limit is exactly as wide
            assert narrow.render(line.text, writer).mask.shape[1] == line.mask.shape[1]
            assert line.text == line.text.strip() and "  " not in line.text
    full = [data.line(w, i).text for w in all_writers(data) for i in range(8)]
    short = [narrow.line(w.id, i).text for w in all_writers(data) for i in range(8)]
    assert np.mean([len(t) for t in short]) < np.mean([len(t) for t in full])


def test_a_writer_is_consistent_and_writers_are_distinct(data):
    kalam = [
        w for w in data.writers["train"] + data.writers["val"] + data.writers["test"] if w.font == "kalam"
    ]
    first, second = kalam[0], kalam[1]
    text = "Hello quiet world"
    a, b = data.render(text, first, seed=0), data.render(text, first, seed=1)
    # same writer, other line: same size, spacing and slant (equal width); only words' baselines move
    assert a.mask.shape == b.mask.shape
    assert np.abs(a.mask.astype(int) - b.mask.astype(int)).mean() < 8
    # two writers of the same font: other parameters, other pixels
    c = data.render(text, second, seed=0)
    assert a.mask.shape != c.mask.shape or np.abs(a.mask.astype(int) - c.mask.astype(int)).mean() > 5
    assert first.style != second.style


def test_tall_characters_outside_the_alphabet_shrink_the_line_instead_of_clipping():
    letters_only = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    data = synthetic(
        fonts=["fontpkg_shadows_into_light"],
        writers_per_font=3,
        charset=letters_only,
        style={"slant": [0, 0], "size": [1, 1], "baseline_jitter": [0, 0]},
    )  # letters fill the line
    writer = data.writers["train"][0]
    plain, tall = data.render("Tall", writer), data.render("Tall ]", writer)  # "]" rises above every letter
    assert tall.mask.shape[0] == 64
    columns = plain.mask.shape[1] // 2

    def ink_height(mask):
        rows = np.flatnonzero(mask[:, :columns].max(axis=1) > 64)
        return rows[-1] - rows[0]

    assert ink_height(tall.mask) < 0.85 * ink_height(plain.mask)


def test_word_source_mixes_capitals_digits_and_punctuation():
    source = WordSource(vocabulary_size=3000)
    rng = np.random.default_rng(0)
    text = " ".join(source.sample(rng, 5) for _ in range(400))
    letters = [c for c in text if c.isalpha()]
    capitals = sum(c.isupper() for c in letters) / len(letters)
    assert 0.02 < capitals < 0.2
    assert any(c.isdigit() for c in text) and {",", "."} <= set(text)
    assert set(text) <= set(source.alphabet) | {" "}


def test_text_file_source_writes_windows_of_the_file(tmp_path):
    file = tmp_path / "story.txt"
    file.write_text("Über den Wolken muss die Freiheit wohl grenzenlos sein.\n\nAlle Ängste, alle Sorgen\n")
    source = FileSource(file)
    rng = np.random.default_rng(1)
    words = file.read_text().split()
    for _ in range(20):
        line = source.sample(rng, 3).split()
        start = words.index(line[0])
        assert words[start : start + 3] == line
    with pytest.raises(UserError, match="does not exist"):
        FileSource(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(UserError, match="holds no words"):
        FileSource(empty)


def test_unknown_writer_and_bad_sizes_are_user_errors(data):
    with pytest.raises(UserError, match="Unknown synthetic writer"):
        data.writer("nobody-0")
    with pytest.raises(UserError, match="words_per_line"):
        synthetic(words_per_line=(3, 2))
    with pytest.raises(UserError, match="max_width"):
        synthetic(max_width=4)
    with pytest.raises(UserError, match="data.style"):
        synthetic(style={"slantiness": [0, 1]})
    with pytest.raises(UserError, match=r"data.train_style.width must be \[low, high\]"):
        synthetic(train_style={"width": [1.3, 0.7]})


def test_train_style_varies_training_hands_only(data):
    """data.train_style replaces ranges for training writers; validation and test writers, and every other
    parameter of the training writers, are drawn as before."""
    wide = synthetic(train_style={"width": [0.5, 1.5]})
    assert wide.fingerprint != data.fingerprint
    for split in ("val", "test"):
        assert [w.style for w in wide.writers[split]] == [w.style for w in data.writers[split]]
        for writer in wide.writers[split]:
            assert np.array_equal(wide.line(writer, 0).mask, data.line(writer.id, 0).mask)
    widths = []
    for writer in wide.writers["train"]:
        before = data.writer(writer.id).style
        assert writer.style.slant == before.slant and writer.style.size == before.size
        assert 0.5 <= writer.style.width <= 1.5
        widths.append((writer.style.width - 1.0) / (before.width - 1.0))  # the same draw, a wider range
    assert np.allclose(widths, 0.5 / 0.15)
