"""Legibility switches: reduction factor, guided attention, stop head, CTC head (docs/legibility.md)."""

import pytest
import torch

from imuru_pl.errors import UserError
from imuru_pl.models.alignment import ctc_loss, diagonal_penalty, guided_attention_loss, stop_loss
from imuru_pl.models.generation import pad_latents
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.tokenizer import encode_texts

TINY_T5 = {"d_model": 32, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16, "d_ff": 64}
PAD = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])
TEXTS = ["first line", "a second, longer line", "third"]
ALL_ON = dict(reduction_factor=2, guided_attention_weight=1.0, stop_head=True, ctc_weight=0.1,
              position_embeddings=True)


def tiny_model(**kwargs) -> Imuru:
    torch.manual_seed(0)
    return Imuru(t5=TINY_T5, padding_latent=PAD, stop_threshold=0.5, trailing_blank_columns=4, **kwargs)


def training_batch(model: Imuru, lengths=(9, 17, 5)):
    gen = torch.Generator().manual_seed(1)
    ids, text_mask = encode_texts(TEXTS)
    style, style_mask = pad_latents([torch.randn(w, 8, generator=gen) for w in (6, 11, 3)])
    target = torch.randn(3, max(lengths), 8, generator=gen)
    target, target_mask = model.pad_target(target, torch.tensor(lengths))
    return ids, text_mask, style, style_mask, target, target_mask


@pytest.mark.parametrize("switches", [
    dict(reduction_factor=2), dict(reduction_factor=3), dict(guided_attention_weight=1.0),
    dict(stop_head=True), dict(ctc_weight=0.1), dict(position_embeddings=True), ALL_ON,
], ids=["r2", "r3", "guided", "stop_head", "ctc", "positions", "all"])
def test_each_switch_trains_every_parameter_and_reports_its_loss(switches):
    model = tiny_model(**switches).train()
    batch = training_batch(model)
    r = model.reduction_factor
    assert batch[4].shape[1] % r == 0, "pad_target rounds up to whole decoder steps"
    out = model(*batch)
    assert out.prediction.shape == batch[4].shape
    expected = {"mse"} | {name for key, name in (("guided_attention_weight", "guided_attention"),
                                                  ("stop_head", "stop"), ("ctc_weight", "ctc"))
                          if switches.get(key)}
    assert set(out.losses) == expected
    total = out.losses["mse"] + sum(
        getattr(model, weight) * out.losses[name]
        for name, weight in (("guided_attention", "guided_attention_weight"), ("stop", "stop_loss_weight"),
                             ("ctc", "ctc_weight")) if name in out.losses)
    torch.testing.assert_close(out.loss, total)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("r", [1, 2, 3])
def test_reduction_factor_cached_generation_equals_full_recompute(r):
    model = tiny_model(reduction_factor=r, position_embeddings=True).eval()
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    cached, lengths = model.generate(ids, text_mask, style, style_mask, max_new_columns=50, stop=None)
    full, full_lengths = model.generate_full_recompute(ids, text_mask, style, style_mask, max_new_columns=50,
                                                       stop=None)
    assert cached.shape == (3, 50, 8), "a cap that is not a multiple of r is still honoured"
    assert lengths.tolist() == full_lengths.tolist() == [50] * 3
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


def test_reduction_factor_prediction_is_the_same_alone_or_in_a_padded_batch():
    model = tiny_model(reduction_factor=2, position_embeddings=True).eval()
    ids, text_mask, style, style_mask, target, target_mask = training_batch(model)
    with torch.no_grad():
        together = model(ids, text_mask, style, style_mask, target, target_mask).prediction
        for i, n in enumerate((9, 17, 5)):
            t, s, w = int(text_mask[i].sum()), int(style_mask[i].sum()), -(-(n + 4) // 2) * 2
            alone = model(ids[i:i + 1, :t], text_mask[i:i + 1, :t], style[i:i + 1, :s], style_mask[i:i + 1, :s],
                          target[i:i + 1, :w], model.target_mask(torch.tensor([n]), w)).prediction[0]
            torch.testing.assert_close(together[i, :w], alone, atol=1e-5, rtol=0)


def test_forward_refuses_a_target_that_is_not_whole_decoder_steps():
    model = tiny_model(reduction_factor=2)
    ids, text_mask, style, style_mask, target, _ = training_batch(model)
    with pytest.raises(UserError, match="multiple of reduction_factor"):
        model(ids, text_mask, style, style_mask, target[:, :-1], model.target_mask(torch.tensor([3, 3, 3]), 19))


def test_stop_head_ends_lines_where_it_says_and_backs_the_padding_rule():
    model = tiny_model(stop_head=True, reduction_factor=2).eval()
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    with torch.no_grad():
        model.stop_proj.weight.zero_()
        model.stop_proj.bias.fill_(20.0)  # every column says "ended"
    _, lengths, stopped = model.generate(ids, text_mask, style, style_mask, max_new_columns=12, stop=None,
                                         return_stopped=True)
    assert lengths.tolist() == [12] * 3 and not stopped.any(), "stop=None switches every stop off"
    with torch.no_grad():
        model.stop_proj.bias.copy_(torch.tensor([-20.0, 20.0]))  # the 2nd column of every step says "ended"
    columns, lengths, stopped = model.generate(ids, text_mask, style, style_mask, max_new_columns=12,
                                               return_stopped=True)
    assert stopped.all()
    assert (lengths <= 1).all(), "the flagged column and everything after it are not part of the line"
    full, full_lengths = model.generate_full_recompute(ids, text_mask, style, style_mask, max_new_columns=12)
    assert lengths.tolist() == full_lengths.tolist()


def test_guided_attention_prefers_the_diagonal():
    steps, letters = torch.tensor([6]), torch.tensor([6])
    weights = diagonal_penalty(steps, letters, 6, 6, sigma=0.2)[0]
    assert torch.all(weights.diagonal() < 1e-6)
    assert weights[0, 5] > 0.9 and weights[5, 0] > 0.9
    text_mask = torch.ones(1, 7, dtype=torch.bool)  # 6 letters + EOS
    diagonal = torch.zeros(1, 1, 6, 7)
    diagonal[0, 0, torch.arange(6), torch.arange(6)] = 1.0
    reversed_ = torch.zeros(1, 1, 6, 7)
    reversed_[0, 0, torch.arange(6), 5 - torch.arange(6)] = 1.0
    good = guided_attention_loss([diagonal], 0, steps, text_mask, sigma=0.2)
    bad = guided_attention_loss([reversed_], 0, steps, text_mask, sigma=0.2)
    assert good < 0.05 < 0.5 < bad


def test_stop_loss_targets_columns_past_the_end():
    lengths, mask = torch.tensor([3]), torch.ones(1, 6, dtype=torch.bool)
    right = torch.tensor([[-9.0, -9.0, -9.0, 9.0, 9.0, 9.0]])
    assert stop_loss(right, lengths, mask) < 1e-3 < 5.0 < stop_loss(-right, lengths, mask)


def test_ctc_loss_is_low_when_columns_spell_the_text():
    ids, _ = encode_texts(["ab"])
    logits = torch.full((1, 4, 384), -10.0)
    for column, token in enumerate([ids[0, 0], 0, ids[0, 1], 0]):  # a, blank, b, blank
        logits[0, column, token] = 10.0
    lengths = torch.tensor([4])
    assert ctc_loss(logits, lengths, ids) < 1e-3
    shuffled = logits[:, [2, 1, 0, 3]]  # b, blank, a, blank
    assert ctc_loss(shuffled, lengths, ids) > 5.0


def test_switch_settings_survive_export(tmp_path):
    model = tiny_model(**ALL_ON).eval()
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    model.save_pretrained(tmp_path)
    loaded = Imuru.from_pretrained(tmp_path)
    assert loaded.reduction_factor == 2 and loaded.stop_head and loaded.ctc_weight == 0.1
    assert loaded.position_embeddings
    a = model.generate(ids, text_mask, style, style_mask, max_new_columns=20)
    b = loaded.generate(ids, text_mask, style, style_mask, max_new_columns=20)
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)
    assert a[1].tolist() == b[1].tolist()


@pytest.mark.parametrize("bad", [dict(reduction_factor=0), dict(guided_attention_weight=-1.0),
                                 dict(guided_attention_sigma=0.0), dict(ctc_weight=-0.1),
                                 dict(stop_loss_weight=-1.0), dict(stop_head_threshold=1.0)])
def test_bad_switch_values_raise_user_error(bad):
    with pytest.raises(UserError):
        tiny_model(**bad)
