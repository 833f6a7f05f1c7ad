"""The line reader of the recognition loss: shapes, learning to read, persistence, and its loss in the module."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from test_imuru_module import batch, module

from cli_helpers import TINY_TRAIN, compose_cfg
from imuru_pl.data.batch import collate_lines
from imuru_pl.errors import UserError
from imuru_pl.metrics.cer import cer
from imuru_pl.models.reader import LineReader
from imuru_pl.models.tokenizer import VOCAB_SIZE, encode_texts
from imuru_pl.tasks.train_reader import check_reader_config, ensure_reader

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


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\(\)`")
def test_the_reader_loss_is_added_in_training_only_and_reaches_the_t5_not_the_vae_or_reader():
    m = module()
    reader = small_reader()
    m.__dict__["reader"], m.reader_weight, m.reader_lines = reader.eval().requires_grad_(False), 0.5, 1
    m.eval()  # posterior means: the same inputs for every call below
    b = batch()
    inputs, counts = m.latents.model_inputs(m.model, b, sample=False)
    out = m.model(**inputs)
    term = m.reader_loss(out.prediction, counts, inputs["text_ids"])
    assert torch.isfinite(term) and term > 0
    assert torch.allclose(m._step(b, "train"), out.loss + 0.5 * term, atol=1e-6)
    assert torch.allclose(m._step(b, "val"), out.loss, atol=1e-6)
    m.reader_start_step = 1  # not yet at step 0
    assert torch.allclose(m._step(b, "train"), out.loss, atol=1e-6)
    term.backward()
    grads = [p.grad for p in m.model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in [*m.vae.parameters(), *reader.parameters()])


def test_ensure_reader_trains_once_into_the_run_and_reuses_it(data, tmp_path):
    cfg, datamodule = data
    cfg = compose_cfg([*TINY_TRAIN, "reader.weight=0.1", "reader.train.steps=3", "reader.train.batch_size=4",
                       "reader.train.eval_lines=4", "reader.arch.channels=[8,16,16,16]", "reader.arch.hidden=64"],
                      tmp_path)
    vae = module().vae
    assert ensure_reader(compose_cfg(TINY_TRAIN, tmp_path), tmp_path, vae, datamodule) is None  # off by default
    reader = ensure_reader(cfg, tmp_path, vae, datamodule)
    files = sorted(p.name for p in (tmp_path / "reader").iterdir())
    assert files == ["config.json", "metrics.json", "model.safetensors"]
    stamp = (tmp_path / "reader" / "model.safetensors").stat().st_mtime_ns
    again = ensure_reader(cfg, tmp_path, vae, datamodule)
    assert (tmp_path / "reader" / "model.safetensors").stat().st_mtime_ns == stamp
    images = torch.rand(1, 1, 64, 32) * 2 - 1
    assert torch.equal(reader(images), again(images))


@pytest.mark.parametrize("override, message", [
    ("reader.weight=-1", "reader.weight must be 0"),
    ("reader.train.vae_fraction=2", "vae_fraction must lie in"),
    ("reader.start_step=-1", "start_step must be 0 or more"),
    ("reader.pretrained=/nonexistent/reader", "not a saved line reader"),
])
def test_bad_reader_settings_are_one_sentence(tmp_path, override, message):
    cfg = compose_cfg([*TINY_TRAIN, "reader.weight=0.1", override], tmp_path)
    with pytest.raises(UserError, match=message):
        check_reader_config(cfg.reader)


def test_the_training_task_hands_the_reader_and_its_settings_to_the_module(tmp_path):
    from imuru_pl.tasks.train import build_module

    cfg = compose_cfg([*TINY_TRAIN, "reader.weight=0.02", "reader.lines=3", "reader.start_step=5"], tmp_path)
    reader, vae = small_reader(), module().vae
    m = build_module(cfg, vae, reader=reader)
    assert m.reader is reader and (m.reader_weight, m.reader_lines, m.reader_start_step) == (0.02, 3, 5)
    assert not any(k.startswith("reader") for k in m.state_dict()), "the frozen reader stays out of checkpoints"
    assert build_module(cfg, vae).reader is None


def test_read_lines_takes_rgb_lines_of_any_width_as_their_gray_padded_version():
    reader = small_reader().eval()
    torch.manual_seed(1)
    gray = torch.rand(2, 1, 64, 94) * 2 - 1
    widths = torch.tensor([94, 60])
    padded = torch.nn.functional.pad(gray, (0, 2), value=1.0)
    assert reader.read_lines(gray.expand(-1, 3, -1, -1), widths) == reader.read(padded, widths)
