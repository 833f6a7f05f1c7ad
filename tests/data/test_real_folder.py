"""A folder of lines in the HWD layout: skipping, both split modes, photos, training, fine-tuning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from test_real_lines import draw_line, make_folder, tiny_pipeline, train_one_step, warnings_of

from imuru_pl.data.folder import FolderDataModule
from imuru_pl.errors import UserError
from imuru_pl.pipeline import ImuruPipeline
from imuru_pl.tasks import train

ROOT = Path(__file__).resolve().parents[2]


def folder(root, **overrides) -> FolderDataModule:
    settings = {
        "root": str(root),
        "seed": 1,
        "val_fraction": 0.3,
        "test_fraction": 0.3,
        "batch_size": 2,
        "eval_batch_size": 2,
    }
    return FolderDataModule(**{**settings, **overrides})


def break_some(root):
    """Add one of each broken entry to a made folder."""
    transcriptions = json.loads((root / "transcriptions.json").read_text())
    (root / "writer0" / "empty.png").write_bytes(b"")
    (root / "writer1" / "text.jpg").write_text("not a jpeg")
    draw_line("no text for me", 0).save(root / "writer2" / "unlisted.png")
    draw_line("blank text", 0).save(root / "writer2" / "blank.png")
    transcriptions.update(
        {
            "writer0/empty.png": "empty file",
            "writer1/text.jpg": "unreadable",
            "writer1/gone.png": "missing",
            "writer2/blank.png": "  ",
            "loose.png": "no writer",
        }
    )
    (root / "transcriptions.json").write_text(json.dumps(transcriptions))


def test_corrupt_entries_are_skipped_and_counted_in_one_warning(tmp_path, caplog):
    root = make_folder(tmp_path, writers=3, lines=4)
    break_some(root)
    with caplog.at_level(logging.WARNING):
        dm = folder(root)
        counts = {s: len(d) for s, d in dm.datasets.items()}
    assert sum(counts.values()) == 12 and all(counts.values())
    [warning] = warnings_of(caplog)
    message = warning.getMessage()
    for reason in (
        "1 empty files",
        "1 unreadable files",
        "1 missing images",
        "1 lines with an empty transcription",
        "1 images with no text",
        "1 transcriptions.json entries not of the form",
    ):
        assert reason in message, reason
    assert "left out 6 of 18 lines" in message


def test_writers_split_is_writer_disjoint(tmp_path):
    dm = folder(make_folder(tmp_path, writers=4, lines=3))
    splits = {s: {w.id for w in dm.writers(s)} for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 4 and all(splits.values())
    assert not (splits["train"] & (splits["val"] | splits["test"]))


def test_one_writer_needs_all_train_and_then_holds_back_lines(tmp_path):
    root = make_folder(tmp_path, writers=1, lines=5)
    with pytest.raises(UserError, match="use data.split=all_train"):
        folder(root).setup()
    dm = folder(root, split="all_train", holdout_fraction=0.2)
    train, val, test = (dm.datasets[s] for s in ("train", "val", "test"))
    train_keys = {train.record(i).key for i in range(len(train))}
    val_keys = {val.record(i).key for i in range(len(val))}
    assert len(train_keys) == 4 and len(val_keys) == 1 and not train_keys & val_keys
    assert val_keys == {test.record(i).key for i in range(len(test))}
    sample = val[0]  # a held-back target takes its style from a training line of the same writer
    assert sample["writer"] == "writer0" and sample["style_key"].replace("/style", "") in train_keys
    with pytest.raises(UserError, match="no writer has that many"):
        folder(make_folder(tmp_path / "two", writers=1, lines=2), split="all_train").setup()


@pytest.mark.parametrize("photo, background", [("tinted", "stretch"), ("uneven", "binarize")])
def test_photos_are_brought_to_white_paper_and_dark_ink_keeping_colour(tmp_path, photo, background):
    root = make_folder(tmp_path, writers=3, lines=3, photo=photo)
    dm = folder(root, split="all_train", holdout_fraction=0.3, background=background, pairing="same_line")
    sample = dm.datasets["train"][0]
    width, height = Image.open(dm.datasets["train"].record(0).path).size
    assert sample["target"].shape == (1, 64, round(width * 64 / height))  # scaled, never cropped
    assert sample["style"].shape == (3, 64, sample["target"].shape[-1])
    paper = sample["target"][0, :5]
    assert (paper > 0.9).float().mean() > 0.95
    ink = sample["target"][0] < -0.5
    assert ink.float().mean() > 0.02
    style = sample["style"]
    if background == "stretch":  # blue ink stays blue in the style image (binarize makes every ink black)
        assert style[2][ink].mean() > style[0][ink].mean() + 0.1


def test_empty_or_unusable_folders_are_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="has no transcriptions.json"):
        folder(tmp_path)
    (tmp_path / "transcriptions.json").write_text("{}")
    with pytest.raises(UserError, match="has no usable line"):
        folder(tmp_path).setup()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "a.png").write_bytes(b"")
    (tmp_path / "transcriptions.json").write_text(json.dumps({"w/a.png": "text", "w/b.png": "text"}))
    with pytest.raises(
        UserError, match=r"has no usable line: 1 empty files .*1 missing images|1 missing images .*1 empty"
    ):
        folder(tmp_path).setup()
    with pytest.raises(UserError, match="data.root"):
        FolderDataModule(root=str(tmp_path / "nowhere"))


def test_one_training_step_on_a_folder(tmp_path):
    module, _ = train_one_step(folder(make_folder(tmp_path, writers=3, lines=4)))
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_finetune_experiment_starts_from_an_exported_model_and_keeps_its_vae(tmp_path, monkeypatch, recwarn):
    monkeypatch.setenv("IMURU_PL_ROOT", str(ROOT))
    data = make_folder(tmp_path / "hand", writers=1, lines=6)
    start = tiny_pipeline(folder(data, split="all_train")).save_pretrained(tmp_path / "start")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "run",
            overrides=[
                "experiment=finetune",
                f"init_from={start}",
                f"data.root={data}",
                f"paths.output_dir={tmp_path / 'run'}",
                "trainer.max_steps=2",
                "logger=none",
                "callbacks=none",
                "heldout.evaluate=false",
                "heldout.num_lines=2",
            ],
        )
    assert cfg.data.split == "all_train" and cfg.optim.lr == 2e-5
    result = train.run(cfg)
    assert result["global_step"] == 2
    assert not [w for w in recwarn if "eval mode" in str(w.message)], "fine-tuning must run in train mode"
    before, after = ImuruPipeline.from_pretrained(start), ImuruPipeline.from_pretrained(result["model_dir"])
    changed = [
        k for k, v in after.model.state_dict().items() if not torch.equal(v, before.model.state_dict()[k])
    ]
    assert "t5_to_vae.weight" in changed
    for name, tensor in before.vae.state_dict().items():  # the exported VAE is kept as it was
        assert torch.equal(after.vae.state_dict()[name], tensor), name
    assert (Path(result["heldout_dir"]) / "generated" / "transcriptions.json").is_file()


def test_a_writer_with_a_single_line_cannot_lend_a_style_and_is_counted(tmp_path, caplog):
    root = make_folder(tmp_path, writers=3, lines=3)
    (root / "solo").mkdir()
    draw_line("all alone", 2).save(root / "solo" / "only.png")
    transcriptions = json.loads((root / "transcriptions.json").read_text())
    (root / "transcriptions.json").write_text(json.dumps({**transcriptions, "solo/only.png": "all alone"}))
    with caplog.at_level(logging.WARNING):
        dm = folder(root, val_fraction=0.2, test_fraction=0.2)
        writers = {w.id for s in ("train", "val", "test") for w in dm.writers(s)}
    assert writers == {"writer0", "writer1", "writer2"}
    [warning] = warnings_of(caplog)
    assert (
        "1 " in warning.getMessage()
        and "no other line (other text) to take a style from" in warning.getMessage()
    )
    same_line = folder(
        root, val_fraction=0.2, test_fraction=0.2, pairing="same_line"
    )  # the VAE's pairs need none
    assert "solo" in {w.id for s in ("train", "val", "test") for w in same_line.writers(s)}
