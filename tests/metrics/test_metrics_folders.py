"""The HWD folder layout: a round trip, and one clear sentence for every broken folder."""

import json

import numpy as np
import pytest
from PIL import Image

from imuru_pl.errors import UserError
from imuru_pl.metrics import Item, read_folder, write_folder


def test_write_then_read_round_trips_writers_texts_and_pixels(tmp_path, lines):
    items = [
        Item("w1", lines.render("first line", "kalam"), "first line"),
        Item("w1", lines.render("Second", "kalam"), "Second"),
        Item("w2", lines.render("other hand", "delius"), "other hand", name="x"),
    ]
    root = write_folder(tmp_path / "fake", items)
    labels = json.loads((root / "transcriptions.json").read_text("utf-8"))
    assert labels == {"w1/00000.png": "first line", "w1/00001.png": "Second", "w2/x.png": "other hand"}
    back = read_folder(root)
    assert [(i.writer, i.name, i.text) for i in back] == [
        ("w1", "00000", "first line"),
        ("w1", "00001", "Second"),
        ("w2", "x", "other hand"),
    ]
    assert np.array_equal(np.asarray(back[2].image), np.asarray(items[2].image))


def test_write_refuses_a_non_empty_folder_and_leaves_nothing_half_written(tmp_path, lines):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "note.txt").write_text("keep me")
    good = Item("w1", lines.render("a", "kalam"), "a")
    with pytest.raises(UserError, match="already exists and is not empty"):
        write_folder(tmp_path / "taken", [good])
    with pytest.raises(UserError, match="writer '../up'"):
        write_folder(tmp_path / "new", [good, Item("../up", good.image, "b")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def _folder(tmp_path, labels):
    root = tmp_path / "set"
    (root / "w1").mkdir(parents=True)
    Image.new("RGB", (80, 64), "white").save(root / "w1" / "a.png")
    if labels is not None:
        (root / "transcriptions.json").write_text(labels)
    return root


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (None, "transcriptions.json is missing"),
        ("{not json", "is not valid JSON"),
        ('["a list"]', "must be one JSON object"),
        ("{}", "has no text for 1 image"),
        ('{"w1/a.png": "a", "w1/b.png": "b"}', "lists 1 image\\(s\\) not found"),
    ],
)
def test_broken_transcriptions_are_user_errors(tmp_path, labels, message):
    with pytest.raises(UserError, match=message):
        read_folder(_folder(tmp_path, labels))


def test_missing_and_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "transcriptions.json").write_text("{}")
    with pytest.raises(UserError, match="holds no images"):
        read_folder(tmp_path / "empty")
    root = _folder(tmp_path, '{"w1/a.png": "a"}')
    (root / "w1" / "a.png").write_bytes(b"broken")
    with pytest.raises(UserError, match="cannot be read"):
        read_folder(root)
