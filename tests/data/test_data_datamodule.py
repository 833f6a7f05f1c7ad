"""The LightningDataModule: batches, writer-disjoint splits, both pairings, fixed evaluation data, cache."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from imuru_pl.data.batch import LineBatch
from imuru_pl.data.datamodule import LineDataModule
from imuru_pl.errors import UserError

FONTS = ["fontpkg_caveat", "fontpkg_delius", "fontpkg_indie_flower", "fontpkg_satisfy"]
LINES = {"train": 6, "val": 3, "test": 3}


def datamodule(**overrides) -> LineDataModule:
    settings = dict(
        seed=11,
        fonts=FONTS,
        writers_per_font=2,
        val_fonts=1,
        test_fonts=1,
        lines_per_writer=LINES,
        batch_size=4,
        eval_batch_size=4,
        max_width=384,
    )
    return LineDataModule(**{**settings, **overrides})


@pytest.fixture(scope="module")
def ready() -> LineDataModule:
    dm = datamodule()
    dm.setup()
    return dm


def test_batches_are_padded_white_to_a_multiple_of_8_with_true_widths(ready):
    batch = next(iter(ready.train_dataloader()))
    assert isinstance(batch, LineBatch) and len(batch) == 4
    assert batch.style.shape[:3] == (4, 3, 64) and batch.target.shape[:3] == (4, 1, 64)
    for images, widths in ((batch.style, batch.style_widths), (batch.target, batch.target_widths)):
        assert images.shape[-1] % 8 == 0 and images.shape[-1] == -(-int(widths.max()) // 8) * 8
        assert images.min() >= -1 and images.max() <= 1 and images.dtype == torch.float32
        for i, width in enumerate(widths.tolist()):
            assert (images[i, :, :, width:] == 1.0).all()  # padding is white
            assert images[i, :, :, :width].min() < 0  # the line itself has ink
    assert max(batch.style_widths.max(), batch.target_widths.max()) <= 384


def test_style_and_target_share_the_writer_and_differ_in_text(ready):
    for split in ("train", "val", "test"):
        dataset = ready.dataset(split)
        for i in range(len(dataset)):
            item = dataset[i]
            assert item["text"] != item["style_text"]
            assert item["style_key"].split("/")[1] == item["target_key"].split("/")[1] == item["writer"]
            assert item["style_key"] != item["target_key"].replace("/clean", "/paper")


def test_splits_are_writer_and_font_disjoint(ready):
    writers = {split: {w.id for w in ready.writers(split)} for split in ("train", "val", "test")}
    fonts = {split: {w.font for w in ready.writers(split)} for split in ("train", "val", "test")}
    assert all(writers.values()) and len(set.union(*writers.values())) == sum(map(len, writers.values()))
    assert not fonts["train"] & (fonts["val"] | fonts["test"]) and not fonts["val"] & fonts["test"]
    for split in ("train", "val", "test"):
        assert set(ready.stores[split].writer_ids) == writers[split]
        assert len(ready.dataset(split)) == len(writers[split]) * LINES[split]


def test_few_fonts_hold_out_writers_within_each_font():
    dm = datamodule(fonts=["fontpkg_caveat"], writers_per_font=4)
    ids = {split: [w.id for w in dm.writers(split)] for split in ("train", "val", "test")}
    assert ids == {"train": ["caveat-0", "caveat-1"], "val": ["caveat-2"], "test": ["caveat-3"]}
    with pytest.raises(UserError, match="writers_per_font"):
        datamodule(fonts=["fontpkg_caveat"], writers_per_font=2)


def test_named_held_out_fonts():
    dm = datamodule(val_fonts=["satisfy"], test_fonts=["caveat", "delius"])
    assert {w.font for w in dm.writers("val")} == {"satisfy"}
    assert {w.font for w in dm.writers("train")} == {"indie_flower"}
    with pytest.raises(UserError, match="available families"):
        datamodule(val_fonts=["comic_sans"])


def test_evaluation_data_is_the_same_every_epoch_and_every_instance(ready):
    first = [b.target for b in ready.val_dataloader()]
    second = [b.target for b in ready.val_dataloader()]
    again = datamodule()
    again.setup("validate")
    third = [b.target for b in again.val_dataloader()]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(first, second, third, strict=True))
    assert [b.style_texts for b in ready.val_dataloader()] == [b.style_texts for b in again.val_dataloader()]
    other_seed = datamodule(seed=12)
    other_seed.setup("validate")
    assert ready.stores["val"].texts != other_seed.stores["val"].texts


def test_same_line_pairing_is_pixel_aligned():
    dm = datamodule(pairing="same_line")
    dm.setup("validate")
    dataset = dm.val_dataset
    for i in range(len(dataset)):
        item = dataset[i]
        assert item["text"] == item["style_text"] and item["style"].shape[-1] == item["target"].shape[-1]
        ink = 1.0 - item["target"][0]
        darkness = 1.0 - item["style"].mean(0)
        darkness = darkness - darkness.median()
        aligned = correlation(ink, darkness, 0)
        assert aligned > 0.95 and all(aligned > correlation(ink, darkness, s) + 0.05 for s in (-2, -1, 1, 2))


def correlation(ink: torch.Tensor, darkness: torch.Tensor, shift: int) -> float:
    """Pearson correlation of the clean ink and the paper render's darkness, shifted by `shift` columns."""
    a, b = ink[:, 4:-4], torch.roll(darkness, shift, dims=1)[:, 4:-4]
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_rendering_api_matches_the_dataset(ready):
    writer = ready.writers("val")[0]
    line = ready.line(writer, 2)
    store = ready.stores["val"]
    row = store.keys.index(line.key)
    assert np.array_equal(store.mask(row), line.mask) and store.texts[row] == line.text
    item = next(ready.dataset("val")[i] for i in range(len(store)) if store.keys[i] == line.key)
    assert torch.equal(item["target"], line.clean)
    rendered = ready.render("Any words at all", writer.id)
    assert rendered.clean.shape[:2] == (1, 64) and rendered.styled.shape[:2] == (3, 64)
    assert rendered.clean.shape[-1] == rendered.styled.shape[-1]


def test_on_disk_cache_gives_the_same_lines(tmp_path):
    cached = datamodule(cache_dir=str(tmp_path))
    cached.prepare_data()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 3 and all(f.startswith(f"synthetic-{cached.fingerprint}") for f in files)
    fresh = datamodule(cache_dir=str(tmp_path))
    fresh.setup()
    plain = datamodule()
    plain.setup("test")
    assert np.array_equal(fresh.stores["test"].masks, plain.stores["test"].masks)
    assert fresh.stores["test"].texts == plain.stores["test"].texts
    assert np.array_equal(fresh.stores["test"].starts, plain.stores["test"].starts), "letter starts kept"
    old = tmp_path / files[1]  # a cache written before letter starts existed is rendered again
    with np.load(old) as data:
        np.savez_compressed(old, **{k: data[k] for k in data.files if k not in ("starts", "start_offsets")})
    again = datamodule(cache_dir=str(tmp_path))
    again.setup()
    assert all(len(again.stores[s].starts) == sum(map(len, again.stores[s].texts)) for s in again.stores)
    (tmp_path / files[0]).write_bytes(b"not a cache")  # a broken file is rendered again, not trusted
    broken = datamodule(cache_dir=str(tmp_path))
    broken.setup()
    assert all(len(broken.stores[s]) for s in ("train", "val", "test"))


class InkMean(L.LightningModule):
    """The smallest real model: predicts each batch's mean target value from one parameter."""

    def __init__(self):
        super().__init__()
        self.level = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[str] = []

    def training_step(self, batch: LineBatch, batch_idx: int) -> torch.Tensor:
        self.seen.extend(batch.writers)
        return (batch.target.mean() - self.level) ** 2

    def validation_step(self, batch: LineBatch, batch_idx: int) -> None:
        self.log("val/loss", (batch.target.mean() - self.level) ** 2, batch_size=len(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_lightning_trainer_fits_on_the_data_module(tmp_path):
    dm = datamodule()
    model = InkMean()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert set(model.seen) == {w.id for w in dm.writers("train")} and len(model.seen) == len(dm.train_dataset)
    assert float(model.level.detach()) > 0.1  # learnt that lines are mostly white paper


def test_worker_processes_give_the_same_batches(ready):
    dm = datamodule(num_workers=1)
    dm.setup("validate")
    assert all(
        torch.equal(a.style, b.style)
        for a, b in zip(dm.val_dataloader(), ready.val_dataloader(), strict=True)
    )


def test_lines_can_come_from_a_text_file(tmp_path):
    file = tmp_path / "letters.txt"
    words = "Dear Ada, the engine computes Bernoulli numbers; Menabrea wrote his notes in 1842.".split()
    file.write_text(" ".join(words) + "\n")
    dm = datamodule(text_file=str(file), words_per_line=(2, 4))
    dm.setup("validate")
    for text in dm.stores["val"].texts:
        line = text.split()
        start = words.index(line[0])
        assert words[start : start + len(line)] == line


def test_config_mistakes_are_user_errors():
    with pytest.raises(UserError, match="pairing"):
        datamodule(pairing="random")
    with pytest.raises(UserError, match="lines_per_writer"):
        datamodule(lines_per_writer={"train": 0, "val": 1, "test": 1})
    with pytest.raises(UserError, match="batch_size"):
        datamodule(batch_size=0)
    with pytest.raises(UserError, match="other_line"):
        datamodule(lines_per_writer={"train": 1, "val": 1, "test": 1}).setup("validate")
