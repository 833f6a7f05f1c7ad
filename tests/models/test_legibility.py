"""The reduction factor and absolute positions (docs/legibility.md), and models saved before the extensions
had modules of their own (format 1)."""

import pytest
import torch

from imuru_pl.errors import UserError
import json

from safetensors.torch import load_file, save_file

from imuru_pl.models.generation import pad_latents
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.tokenizer import encode_texts

TINY_T5 = {"d_model": 32, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16, "d_ff": 64}
PAD = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])
TEXTS = ["first line", "a second, longer line", "third"]
ALL_ON = dict(reduction_factor=2, positions=True)


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


@pytest.mark.parametrize("switches", [dict(reduction_factor=2), dict(reduction_factor=3), dict(positions=True),
                                      ALL_ON], ids=["r2", "r3", "positions", "all"])
def test_each_switch_trains_every_parameter(switches):
    model = tiny_model(**switches).train()
    batch = training_batch(model)
    r = model.reduction_factor
    assert batch[4].shape[1] % r == 0, "pad_target rounds up to whole decoder steps"
    out = model(*batch)
    assert out.prediction.shape == batch[4].shape
    assert set(out.losses) == {"mse"}
    torch.testing.assert_close(out.loss, out.losses["mse"])
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"


def test_the_reference_model_has_no_extension_parameters():
    names = [name for name, _ in tiny_model().named_parameters()]
    assert not any(name.startswith(("positions.", "letters.")) for name in names)
    assert any(name.startswith("positions.") for name, _ in tiny_model(positions=True).named_parameters())


@pytest.mark.parametrize("r", [1, 2, 3])
def test_reduction_factor_cached_generation_equals_full_recompute(r):
    model = tiny_model(reduction_factor=r, positions=True).eval()
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    cached, lengths = model.generate(ids, text_mask, style, style_mask, max_new_columns=50, stop=None)
    full, full_lengths = model.generate_full_recompute(ids, text_mask, style, style_mask, max_new_columns=50,
                                                       stop=None)
    assert cached.shape == (3, 50, 8), "a cap that is not a multiple of r is still honoured"
    assert lengths.tolist() == full_lengths.tolist() == [50] * 3
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


def test_reduction_factor_prediction_is_the_same_alone_or_in_a_padded_batch():
    model = tiny_model(reduction_factor=2, positions=True).eval()
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


def test_switch_settings_survive_export(tmp_path):
    model = tiny_model(**ALL_ON).eval()
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    model.save_pretrained(tmp_path)
    loaded = Imuru.from_pretrained(tmp_path)
    assert loaded.reduction_factor == 2 and loaded.config_dict()["positions"]
    a = model.generate(ids, text_mask, style, style_mask, max_new_columns=20)
    b = loaded.generate(ids, text_mask, style, style_mask, max_new_columns=20)
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)
    assert a[1].tolist() == b[1].tolist()


def _as_format_1(directory, **switches) -> None:
    """Rewrite a saved model directory as the format before the extensions had their own keys."""
    config = json.loads((directory / "config.json").read_text())
    config.pop("format_version")
    config["position_embeddings"] = config.pop("positions")
    config.pop("letters")
    config.update({"guided_attention_weight": 0.0, "guided_attention_sigma": 0.2, "stop_head": False,
                   "stop_loss_weight": 1.0, "stop_head_threshold": 0.5, "ctc_weight": 0.0, "aligned_letters": False,
                   "duration_loss_weight": 1.0, "duration_dropout": 0.0, "letter_count_weight": 0.0,
                   "step_letters": "mean", "width_head": False, **switches})
    (directory / "config.json").write_text(json.dumps(config))
    state = load_file(str(directory / "model.safetensors"))
    renamed = {{"positions.text_scale": "text_position_scale",
                "positions.column_scale": "column_position_scale"}.get(k, k): v for k, v in state.items()}
    save_file(renamed, str(directory / "model.safetensors"))


def test_a_model_saved_in_the_earlier_format_loads_and_writes_the_same_columns(tmp_path):
    model = tiny_model(**ALL_ON).eval()
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    model.save_pretrained(tmp_path)
    _as_format_1(tmp_path)
    loaded = Imuru.from_pretrained(tmp_path)
    a = model.generate(ids, text_mask, style, style_mask, max_new_columns=20)
    b = loaded.generate(ids, text_mask, style, style_mask, max_new_columns=20)
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)


@pytest.mark.parametrize("retired", ["stop_head", "guided_attention_weight", "ctc_weight", "letter_count_weight",
                                     "duration_dropout"])
def test_a_model_trained_with_a_retired_switch_is_refused_in_one_sentence(tmp_path, retired):
    tiny_model().save_pretrained(tmp_path)
    _as_format_1(tmp_path, **{retired: True if retired == "stop_head" else 0.1})
    with pytest.raises(UserError, match=f"trained with {retired}, a switch retired.*bfe0d8e"):
        Imuru.from_pretrained(tmp_path)


@pytest.mark.parametrize("bad", [dict(reduction_factor=0), dict(letters={"step_letters": "last"}),
                                 dict(letters={"duration_loss_weight": -1.0}), dict(letters={"stop_head": True}),
                                 dict(stop_head=True)])
def test_bad_switch_values_raise_user_error(bad):
    with pytest.raises((UserError, TypeError)):
        tiny_model(**bad)
