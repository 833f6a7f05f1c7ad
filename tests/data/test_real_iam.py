"""IAM lines in the official layout: parsing, skipping with one counted warning, splits, one training step."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_real_lines import IAM_FORMS, IAM_MAX_WIDTH, make_iam, tiny_pipeline, train_one_step, warnings_of

from imuru_pl.data.batch import LineBatch
from imuru_pl.data.iam import IAMDataModule, line_image, transcription_text
from imuru_pl.errors import UserError
from imuru_pl.metrics.folders import read_folder
from imuru_pl.tasks.heldout import write_heldout_lines


@pytest.fixture(scope="module")
def iam_root(tmp_path_factory):
    return make_iam(tmp_path_factory.mktemp("iam"))


def iam(root, **overrides) -> IAMDataModule:
    settings = {
        "root": str(root),
        "seed": 3,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "max_width": IAM_MAX_WIDTH,
        "batch_size": 4,
        "eval_batch_size": 4,
    }
    return IAMDataModule(**{**settings, **overrides})


def test_transcriptions_become_plain_text():
    tokens = ["A|MOVE|to|stop|Mr.|Gaitskell|.|He|said|&quot;|no|&quot;|,|Labour|'s|(|sic|)"]
    assert (
        transcription_text(tokens, detokenize=False)
        == 'A MOVE to stop Mr. Gaitskell . He said " no " , Labour \'s ( sic )'
    )
    assert (
        transcription_text(tokens, detokenize=True)
        == 'A MOVE to stop Mr. Gaitskell. He said " no ", Labour\'s (sic)'
    )
    # A token may hold a space ("M Ps"): the row splits into more fields, the text is unchanged.
    assert transcription_text(["of|M", "Ps|today"], detokenize=True) == "of M Ps today"


def test_image_path_follows_the_official_layout(tmp_path):
    assert line_image(tmp_path, "a01-000u-00") == tmp_path / "lines" / "a01" / "a01-000u" / "a01-000u-00.png"


def test_parsing_skipping_and_one_counted_warning(iam_root, caplog):
    dm = iam(iam_root)
    with caplog.at_level(logging.INFO):
        datasets = dm.datasets
    [warning] = warnings_of(caplog)
    message = warning.getMessage()
    assert "left out 6 of 26 lines" in message
    for reason in (
        "1 missing images",
        "1 empty files",
        "1 unreadable files",
        f"1 lines wider than data.max_width={IAM_MAX_WIDTH}",
        "1 malformed rows",
        "1 lines whose form has no writer",
    ):
        assert reason in message, reason
    assert any("flagged 'err'" in r.getMessage() for r in caplog.records)
    assert sum(len(d) for d in datasets.values()) == 20  # 5 writers x 4 good lines
    # Texts are the transcription with words joined; writer ids come from forms.txt.
    train = datasets["train"]
    texts = {train.record(i).key: train.record(i).text for i in range(len(train))}
    writers = {w.id for split in ("train", "val", "test") for w in dm.writers(split)}
    assert writers == {writer for writer, _ in IAM_FORMS.values()}
    if "iam/a01-000u-00" in texts:
        assert texts["iam/a01-000u-00"] == "A MOVE to stop Mr. Gaitskell."
    # A second access reuses the index: no second warning.
    dm.setup("fit")
    assert len(warnings_of(caplog)) == 1


def test_err_lines_can_be_kept(iam_root):
    kept = iam(iam_root, skip_err_lines=False)
    keys = {d.record(i).key for d in kept.datasets.values() for i in range(len(d))}
    assert "iam/a01-000u-04" in keys


def test_samples_follow_the_batch_contract(iam_root):
    dm = iam(iam_root)
    dm.setup("fit")
    sample = dm.train_dataset[0]
    assert sample["style"].shape[:2] == (3, 64) and sample["target"].shape[:2] == (1, 64)
    assert sample["writer"] and sample["text"] != sample["style_text"]
    assert sample["target_key"] != sample["style_key"].replace("/style", "/target")  # a different line
    target = sample["target"]
    assert target.max() <= 1 and target.min() >= -1
    assert (target[:, :4, :] > 0.9).float().mean() > 0.95  # grey scan paper became white
    assert target.min() < -0.5  # the ink is dark
    again = dm.train_dataset[0]
    assert again["style_key"] == sample["style_key"] and torch.equal(again["target"], target)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, LineBatch) and batch.style.shape[1] == 3 and batch.target.shape[1] == 1
    assert int(batch.target_widths.max()) <= IAM_MAX_WIDTH


def test_seeded_split_is_writer_disjoint_and_reproducible(iam_root):
    first, again, other = iam(iam_root), iam(iam_root), iam(iam_root, seed=4)
    splits = {s: {w.id for w in first.writers(s)} for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])
    assert splits == {s: {w.id for w in again.writers(s)} for s in splits}
    draws = [{s: {w.id for w in dm.writers(s)} for s in splits} for dm in (other, iam(iam_root, seed=5))]
    assert any(d != splits for d in draws), "the split must depend on the seed"
    for split in splits:  # every target's style is another line of the same writer
        dataset = first.datasets[split]
        for i in range(len(dataset)):
            style = dataset.pool.records[int(dataset.partners[dataset.targets[i]])]
            assert style.writer == dataset.record(i).writer and style.key != dataset.record(i).key


def write_split(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_split_files_of_form_ids_and_line_ids(iam_root, tmp_path, caplog):
    splits = {
        "train": write_split(tmp_path / "train.txt", ["# Aachen-style: form ids", "a01-000u", "a01-001"]),
        "val": write_split(tmp_path / "val.txt", ["b02-010-00", "b02-010-01.png", ""]),
        "test": write_split(tmp_path / "test.txt", ["c03-021", "d04-030"]),
    }
    with caplog.at_level(logging.INFO):
        dm = iam(iam_root, splits=splits)
        keys = {s: sorted(d.record(i).key for i in range(len(d))) for s, d in dm.datasets.items()}
    assert keys["val"] == ["iam/b02-010-00", "iam/b02-010-01"]
    assert {w.id for w in dm.writers("train")} == {"000", "001"}
    assert {w.id for w in dm.writers("test")} == {"003", "004"}
    assert any("none of the split files" in r.getMessage() for r in caplog.records)  # b02-010-02/03


def test_split_file_errors_are_one_sentence(iam_root, tmp_path):
    train = write_split(tmp_path / "train.txt", ["a01-000u"])
    with pytest.raises(UserError, match="needs a file for each of train, val and test"):
        iam(iam_root, splits={"train": train})
    with pytest.raises(UserError, match="does not exist"):
        iam(iam_root, splits={"train": train, "val": str(tmp_path / "nope.txt"), "test": train})
    overlap = {
        "train": train,
        "val": write_split(tmp_path / "v.txt", ["a01-000u-01"]),
        "test": write_split(tmp_path / "t.txt", ["c03-021"]),
    }
    with pytest.raises(UserError, match="in two splits, e.g. a01-000u-01"):
        iam(iam_root, splits=overlap).setup()


def test_not_an_iam_folder_and_an_empty_one(tmp_path):
    with pytest.raises(UserError, match="data.root"):
        IAMDataModule(root=None)
    with pytest.raises(UserError, match="ascii/lines.txt is missing"):
        IAMDataModule(root=str(tmp_path))
    (tmp_path / "ascii").mkdir()
    (tmp_path / "lines").mkdir()
    (tmp_path / "ascii" / "lines.txt").write_text("# only comments\na01-000u-00 ok 1 1 1 1 10 10 gone|line\n")
    (tmp_path / "ascii" / "forms.txt").write_text("a01-000u 000 1 all 1 1 2 2\n")
    with pytest.raises(
        UserError, match=r"has no usable line: 1 missing images \(e\.g\. .*a01-000u-00\.png\)"
    ):
        IAMDataModule(root=str(tmp_path)).setup()


def test_one_training_step_on_iam(iam_root):
    train_one_step(iam(iam_root, batch_size=2, eval_batch_size=2))


def test_heldout_lines_use_real_targets_and_a_same_text_line_of_another_writer(iam_root, tmp_path, caplog):
    splits = {
        "train": write_split(tmp_path / "train.txt", ["a01-000u", "a01-001"]),
        "val": write_split(tmp_path / "val.txt", ["b02-010"]),
        "test": write_split(
            tmp_path / "test.txt", ["c03-021", "d04-030"]
        ),  # both wrote "the same words here"
    }
    dm = iam(iam_root, splits=splits)
    assert dm.line_with_text("the same words here", other_than="003").shape[:2] == (1, 64)
    assert dm.line_with_text("a large majority of", other_than="003") is None  # only 003 wrote it
    cfg = OmegaConf.create({"heldout": {"num_lines": 8, "evaluate": False}, "data": {"eval_batch_size": 4}})
    with caplog.at_level(logging.INFO):
        result = write_heldout_lines(cfg, tiny_pipeline(dm), dm, tmp_path / "run")
    root = tmp_path / "run" / "heldout"
    assert result["heldout_dir"] == str(root)
    real, generated, wrong = (read_folder(root / name) for name in ("real", "generated", "wrong_writer"))
    assert len(real) == len(generated) == 8 and {i.writer for i in real} == {"003", "004"}
    assert [(i.writer, i.text) for i in wrong] == [
        ("003", "the same words here"),
        ("004", "the same words here"),
    ]
    # Real lines are the test split's own images (scaled to 64 px), not renders.
    source = Image.open(iam_root / "lines" / "c03" / "c03-021" / "c03-021-00.png")
    assert real[0].image.size == (round(source.width * 64 / source.height), 64)
    assert any("written by no other test writer" in r.getMessage() for r in caplog.records)
