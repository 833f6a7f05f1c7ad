"""Fonts: families are found, missing glyphs are detected (checked against the fonts' own cmaps), no tofu."""

from __future__ import annotations

import string

import pytest

from imuru_pl.data.datamodule import LineDataModule
from imuru_pl.data.fonts import discover_families, has_glyph
from imuru_pl.data.synthetic import DEFAULT_FONT_PACKAGES
from imuru_pl.data.text import DEFAULT_CHARSET
from imuru_pl.errors import UserError

TTFont = pytest.importorskip("fontTools.ttLib").TTFont
subset = pytest.importorskip("fontTools.subset")

PROBES = DEFAULT_CHARSET + "éüß€’“→ΩжあĀ[]{}|@#"


@pytest.fixture(scope="module")
def families():
    return discover_families(DEFAULT_FONT_PACKAGES)


def cmap(path: str) -> set[int]:
    return set(TTFont(path, lazy=True).getBestCmap())


def test_every_installed_family_is_found_with_its_weights(families):
    assert len(families) == len(DEFAULT_FONT_PACKAGES)
    kalam = next(f for f in families if f.name == "kalam")
    assert [face.weight for face in kalam.faces] == [300, 400, 700]  # three static files, one family
    caveat = next(f for f in families if f.name == "caveat")
    assert caveat.faces[0].weight_axis == (400.0, 700.0)
    assert caveat.face_for(1.0)[1] == 700.0 and kalam.face_for(1.0)[0].weight == 700


def test_glyph_detection_agrees_with_the_font_cmap(families):
    for family in families:
        for face in family.faces:
            mapped = cmap(face.path)
            for char in PROBES:
                assert has_glyph(face.path, char) == (ord(char) in mapped), (face.path, char)


@pytest.fixture(scope="module")
def font_without_q(tmp_path_factory, families):
    """A real font with 'q', 'Q' and the digits removed (fontTools subsetter), in its own folder."""
    folder = tmp_path_factory.mktemp("fonts")
    source = next(f for f in families if f.name == "delius").faces[0].path
    keep = "".join(c for c in DEFAULT_CHARSET if c not in "qQ" + string.digits)
    options = subset.Options()
    options.name_IDs = ["*"]  # keep the family name
    font = TTFont(source)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=keep)
    subsetter.subset(font)
    font.save(folder / "DeliusNoQ.ttf")
    return folder


def test_a_font_missing_glyphs_never_gets_them(font_without_q):
    data = LineDataModule(
        seed=3,
        fonts=[],
        font_dirs=[str(font_without_q)],
        writers_per_font=3,
        lines_per_writer={"train": 40, "val": 2, "test": 2},
        words_per_line=(3, 6),
    )
    [family] = data.data.families
    assert not has_glyph(family.faces[0].path, "q") and has_glyph(family.faces[0].path, "p")
    data.setup("fit")
    texts = "".join(data.stores["train"].texts)
    mapped = cmap(family.faces[0].path)
    assert all(ord(c) in mapped for c in texts)
    assert "q" not in texts and not any(c.isdigit() for c in texts)
    with pytest.raises(UserError, match="cannot write 'q'"):
        data.render("quiet", data.writers("train")[0])


def test_dataset_lines_use_only_glyphs_of_their_font():
    data = LineDataModule(
        seed=5,
        writers_per_font=1,
        val_fonts=1,
        test_fonts=1,
        lines_per_writer={"train": 12, "val": 12, "test": 12},
    )
    data.setup()
    maps = {f.name: set.intersection(*(cmap(face.path) for face in f.faces)) for f in data.data.families}
    for split, store in data.stores.items():
        for text, writer_id in zip(store.texts, store.writer_ids, strict=True):
            font = data.writer(writer_id).font
            assert all(ord(c) in maps[font] for c in text), (split, font, text)
            assert set(text) <= set(DEFAULT_CHARSET)


def test_a_missing_font_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        discover_families([], [str(tmp_path / "nowhere")])
    with pytest.raises(UserError, match="no .ttf or .otf"):
        discover_families([], [str(tmp_path)])
    with pytest.raises(UserError, match="not installed"):
        discover_families(["fontpkg_no_such_font"])
