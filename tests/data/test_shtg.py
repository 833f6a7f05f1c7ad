"""The styled-HTG set format of the HWD library: reading, checking, writing, image ids, text mapping."""

import gzip
import json
from pathlib import Path

import pytest
from PIL import Image

from imuru_pl.data.shtg import ShtgSample, index_images, read_set, simplify_text, write_set
from imuru_pl.data.text import DEFAULT_CHARSET
from imuru_pl.errors import UserError

ENTRY = {"style_ids": ["a01-000u-01", "a01-000u-02"], "gen_id": "a01-000u-00", "text": "A MOVE to stop",
         "dst": "000/a01-000u-00.png"}


def gz(path: Path, data) -> Path:
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    return path


def test_a_set_is_read_as_the_library_writes_it_and_written_back_the_same(tmp_path):
    older = {**ENTRY, "dst": "001/x.png", "word": ENTRY["text"]}  # older files name the text `word`
    del older["text"]
    samples = read_set(gz(tmp_path / "set.json.gz", [ENTRY, older]))
    assert samples[0] == ShtgSample("A MOVE to stop", "a01-000u-00", "000/a01-000u-00.png",
                                    ("a01-000u-01", "a01-000u-02"))
    assert samples[0].author == "000" and samples[1].text == "A MOVE to stop"
    assert samples[0].styles(3) == ("a01-000u-01", "a01-000u-02", "a01-000u-01")  # style_ids[i % len]
    assert read_set(write_set(tmp_path / "again.json.gz", samples)) == samples
    plain = tmp_path / "set.json"
    plain.write_text(json.dumps([ENTRY]))
    assert read_set(plain) == samples[:1]


@pytest.mark.parametrize("data, why", [
    ({"samples": [ENTRY]}, "holds no list of samples"),
    ([], "holds no list of samples"),
    (["a01-000u-00"], "entry 0 is a str"),
    ([{k: v for k, v in ENTRY.items() if k != "dst"}], "entry 0 has no dst"),
    ([{**ENTRY, "style_ids": []}], "style_ids is not a non-empty list"),
    ([{**ENTRY, "dst": "../../etc/x.png"}], "is not <author>/<name>.png"),
    ([{**ENTRY, "dst": "x.png"}], "is not <author>/<name>.png"),
    ([ENTRY, ENTRY], "two samples share the dst"),
])
def test_a_file_that_is_not_a_set_is_one_sentence(tmp_path, data, why):
    with pytest.raises(UserError, match="is not a styled-HTG set file") as err:
        read_set(gz(tmp_path / "bad.json.gz", data))
    assert why in str(err.value)


def test_unreadable_and_missing_set_files_are_one_sentence(tmp_path):
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(gzip.compress(json.dumps([ENTRY]).encode())[:30])
    text = tmp_path / "notes.txt"
    text.write_text("not json")
    for path, message in [(cut, "cannot be read"), (text, "it is not JSON"), (tmp_path / "no.json.gz", "does not exist")]:
        with pytest.raises(UserError, match=message):
            read_set(path)


def test_images_are_found_by_stem_at_any_depth(tmp_path):
    (tmp_path / "a01" / "a01-000u").mkdir(parents=True)
    Image.new("L", (80, 20), 255).save(tmp_path / "a01" / "a01-000u" / "a01-000u-00.png")
    Image.new("RGB", (80, 20), "white").save(tmp_path / "a01" / "b.jpg")
    (tmp_path / "a01" / ".a01-000u-00.tmp.png").write_bytes(b"")  # hidden: an interrupted write
    assert set(index_images(tmp_path)) == {"a01-000u-00", "b"}
    (tmp_path / "empty").mkdir()
    for folder, message in [(tmp_path / "empty", "holds no images"), (tmp_path / "nowhere", "does not exist")]:
        with pytest.raises(UserError, match=message):
            index_images(folder)


def test_text_outside_the_charset_is_mapped_as_the_library_does():
    assert simplify_text("Café naïve", DEFAULT_CHARSET) == "Cafe naive"  # NFD: base letter kept, mark dropped
    assert simplify_text("cost & £5  #1", DEFAULT_CHARSET) == "cost 5 1"
    assert simplify_text("Hello, world!", DEFAULT_CHARSET) == "Hello, world!"
    assert simplify_text("日本", DEFAULT_CHARSET) == ""
