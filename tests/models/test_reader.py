"""The line reader of the VAE's recognition loss: shapes, its CTC loss, learning to read, persistence."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from cli_helpers import TINY_TRAIN, compose_cfg
from imuru_pl.data.batch import collate_lines
from imuru_pl.errors import UserError
from imuru_pl.metrics.cer import cer
from imuru_pl.models.reader import LineReader, ctc_loss
from imuru_pl.models.tokenizer import VOCAB_SIZE, encode_texts
from imuru_pl.tasks.train_reader import check_reader_config

SMALL = dict(channels=[8, 16, 16, 16], hidden=64)


def small_reader(seed: int = 0) -> LineReader:
    torch.manual_seed(seed)
    return LineReader(**SMALL)


def test_one_frame_per_4_px_over_the_byte_ids_and_a_clear_error_for_other_shapes():
    logits = small_reader()(torch.zeros(2, 1, 64, 96))
    assert logits.shape == (2, 24, VOCAB_SIZE)
    with pytest.raises(UserError, match="multiple of 4"):
        small_reader()(torch.zeros(1, 1, 64, 98))
    with pytest.raises(UserError, match=r"\(B, 1, 64, W\)"):
        small_reader()(torch.zeros(1, 3, 64, 96))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = compose_cfg(TINY_TRAIN, tmp_path_factory.mktemp("reader_data"))
    return cfg, instantiate(cfg.data)


def test_a_reader_learns_to_read_two_rendered_lines(data):
    _, datamodule = data
    lines = collate_lines([datamodule.dataset("train")[i] for i in (0, 1)])
    reader = small_reader()
    ids = encode_texts(lines.texts)[0]
    before = cer(reader.eval().read(lines.target, lines.target_widths), lines.texts)
    optimizer = torch.optim.AdamW(reader.train().parameters(), lr=3e-3)
    for _ in range(200):
        optimizer.zero_grad()
        reader.ctc(lines.target, lines.target_widths, ids).backward()
        optimizer.step()
    after = cer(reader.eval().read(lines.target, lines.target_widths), lines.texts)
    assert before > 0.8 and after < 0.1, (before, after, reader.read(lines.target, lines.target_widths))


def test_save_and_load_give_the_same_frozen_reader(tmp_path):
    reader = small_reader().eval()
    reader.save_pretrained(tmp_path / "reader")
    loaded = LineReader.from_pretrained(tmp_path / "reader")
    images = torch.rand(2, 1, 64, 64) * 2 - 1
    assert torch.equal(reader(images), loaded(images))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    (tmp_path / "reader" / "config.json").write_text('{"model_type": "imuru"}')
    with pytest.raises(UserError, match="Cannot load the line reader"):
        LineReader.from_pretrained(tmp_path / "reader")
    with pytest.raises(UserError, match="not a saved line reader"):
        LineReader.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("override, message", [
    ("reader.train.steps=0", "reader.train.steps must be at least 1"),
    ("reader.train.lr=0", "reader.train.lr must be positive"),
    ("reader.pretrained=/nonexistent/reader", "not a saved line reader"),
])
def test_bad_reader_settings_are_one_sentence(tmp_path, override, message):
    cfg = compose_cfg([*TINY_TRAIN, override], tmp_path)
    with pytest.raises(UserError, match=message):
        check_reader_config(cfg.reader)


def test_ctc_loss_is_low_when_frames_spell_the_text():
    ids, _ = encode_texts(["ab"])
    logits = torch.full((1, 4, VOCAB_SIZE), -10.0)
    for frame, token in enumerate([ids[0, 0], 0, ids[0, 1], 0]):  # a, blank, b, blank
        logits[0, frame, token] = 10.0
    lengths = torch.tensor([4])
    assert ctc_loss(logits, lengths, ids) < 1e-3
    shuffled = logits[:, [2, 1, 0, 3]]  # b, blank, a, blank
    assert ctc_loss(shuffled, lengths, ids) > 5.0
