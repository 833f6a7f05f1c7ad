"""The VAE's recognition loss (`vae.train.reader_weight`): whole letters of each crop, read by a frozen reader."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_reader import small_reader
from test_vae_lines import tiny_autoencoder

from cli_helpers import TINY_TRAIN, compose_cfg
from imuru_pl.data.batch import collate_lines, line_loader
from imuru_pl.errors import UserError
from imuru_pl.models.vae import LineVAE
from imuru_pl.models.vae_module import VAEModule, random_crops, whole_letters
from imuru_pl.tasks.train_reader import ensure_vae_reader
from imuru_pl.tasks.train_vae import build_datamodule, build_module

STARTS = torch.tensor([0.0, 10.0, 20.0, 30.0])


@pytest.mark.parametrize("offset, width, expected", [
    (0, 40, (0, 40, "abcd")),  # the whole line
    (5, 20, (5, 15, "b")),  # only b lies wholly inside [5, 25)
    (8, 30, (2, 22, "bc")),  # d ends at the line's end (40), past the crop's 38
    (12, 5, None),  # no letter fits
])
def test_whole_letters_keeps_the_letters_inside_the_crop(offset, width, expected):
    assert whole_letters("abcd", STARTS, 40, offset, width) == expected


def test_whole_letters_without_starts_reads_only_whole_lines_and_never_blanks():
    assert whole_letters("abcd", None, 40, 0, 40) == (0, 40, "abcd")
    assert whole_letters("abcd", None, 40, 8, 32) is None
    assert whole_letters("a  d", STARTS, 40, 8, 24) is None  # only the two spaces fit


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    cfg = compose_cfg(TINY_TRAIN, tmp_path_factory.mktemp("vae_reading"))
    datamodule = build_datamodule(cfg)
    return cfg, datamodule, collate_lines([datamodule.dataset("train")[i] for i in range(4)])


def reading_module(weight: float = 0.5) -> VAEModule:
    torch.manual_seed(0)
    return VAEModule(LineVAE(tiny_autoencoder()), crop_width=128, reader=small_reader(), reader_weight=weight)


def test_the_reading_loss_is_added_and_trains_the_vae_not_the_reader(lines):
    _, _, batch = lines
    module = reading_module()
    crops = random_crops(batch, 128, torch.Generator().manual_seed(0))
    inputs, targets = module.training_inputs(batch, crops)
    letters = module.crop_letters(batch, crops[2], crops[3])
    assert all(item is not None for item in letters)
    for (left, right, text), line, offset in zip(letters, batch.texts, crops[3].tolist()):
        assert text in line and 0 <= left < right <= 128
    plain = module.losses(inputs, targets, sample=False)
    reading = module.losses(inputs, targets, sample=False, letters=letters)
    assert "reader" not in plain and reading["reader"] > 0
    assert torch.allclose(reading["loss"], plain["loss"] + 0.5 * reading["reader"], atol=1e-6)
    reading["reader"].backward()
    decoder_grads = [p.grad for p in module.vae.autoencoder.decoder.parameters() if p.grad is not None]
    assert decoder_grads and sum(float(g.abs().sum()) for g in decoder_grads) > 0
    assert all(p.grad is None for p in module.reader.parameters())


@pytest.mark.filterwarnings("ignore:The '(train|val)_dataloader' does not have many workers")
def test_fitting_logs_the_reading_loss_and_leaves_the_reader_as_it_was(lines):
    _, datamodule, _ = lines
    module = reading_module()
    before = {k: v.clone() for k, v in module.reader.state_dict().items()}
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, line_loader(datamodule.dataset("train"), 4, shuffle=True))
    assert "train/reader" in trainer.callback_metrics
    assert not module.reader.training  # its batch norms keep their running statistics
    assert all(torch.equal(before[k], v) for k, v in module.reader.state_dict().items())


def test_a_negative_weight_or_a_weight_without_a_reader_is_one_sentence():
    with pytest.raises(UserError, match="reader_weight must be 0"):
        VAEModule(LineVAE(tiny_autoencoder()), reader=small_reader(), reader_weight=-1)
    with pytest.raises(UserError, match="reader_weight must be 0"):
        VAEModule(LineVAE(tiny_autoencoder()), reader_weight=0.3)


SMALL_READER = ["reader.train.steps=3", "reader.train.batch_size=4", "reader.train.eval_lines=4",
                "reader.arch.channels=[8,16,16,16]", "reader.arch.hidden=64"]


def test_ensure_vae_reader_trains_on_clean_lines_once_and_reuses_it(lines, tmp_path):
    cfg, datamodule, _ = lines
    assert ensure_vae_reader(cfg, tmp_path, datamodule) is None  # off by default
    cfg = compose_cfg([*TINY_TRAIN, "vae.train.reader_weight=0.3", *SMALL_READER], tmp_path)
    reader = ensure_vae_reader(cfg, tmp_path, datamodule)
    metrics = (tmp_path / "vae_reader" / "metrics.json").read_text()
    assert "cer_val_clean" in metrics and "cer_val_vae" not in metrics  # no VAE exists yet
    stamp = (tmp_path / "vae_reader" / "model.safetensors").stat().st_mtime_ns
    again = ensure_vae_reader(cfg, tmp_path, datamodule)
    assert (tmp_path / "vae_reader" / "model.safetensors").stat().st_mtime_ns == stamp
    images = torch.rand(1, 1, 64, 32) * 2 - 1
    assert torch.equal(reader(images), again(images))
    module = build_module(cfg, LineVAE(tiny_autoencoder()), reader)
    assert module.reader is reader and module.hparams.reader_weight == 0.3
    assert not any(k.startswith("reader") for k in module.state_dict())


class NoLetterStarts:
    """A data module whose lines carry no letter positions (as real data)."""

    def dataset(self, split):
        return [{"text": "a line"}]


@pytest.mark.parametrize("override, message", [
    ("vae.train.reader_weight=-0.1", "reader_weight must be 0 \\(off\\) or positive"),
    ("reader.train.steps=0", "reader.train.steps must be at least 1"),
])
def test_bad_vae_reader_settings_are_one_sentence(tmp_path, override, message):
    cfg = compose_cfg([*TINY_TRAIN, "vae.train.reader_weight=0.3", override], tmp_path)
    with pytest.raises(UserError, match=message):
        ensure_vae_reader(cfg, tmp_path, NoLetterStarts())


def test_crops_of_data_without_letter_positions_are_refused_before_training(tmp_path):
    cfg = compose_cfg([*TINY_TRAIN, "vae.train.reader_weight=0.3"], tmp_path)
    with pytest.raises(UserError, match="crop_width=null"):
        ensure_vae_reader(cfg, tmp_path, NoLetterStarts())
    assert not (tmp_path / "vae_reader").exists()
    small_reader().save_pretrained(tmp_path / "saved")
    whole = compose_cfg([*TINY_TRAIN, "vae.train.reader_weight=0.3", "vae.train.crop_width=null",
                         f"reader.pretrained={tmp_path / 'saved'}"], tmp_path)
    assert ensure_vae_reader(whole, tmp_path, NoLetterStarts()) is not None  # whole lines need no positions
