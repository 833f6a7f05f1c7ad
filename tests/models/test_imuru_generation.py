"""Generation: the cached generator matches the reference loop, stops per sample, saves and loads."""

import json
from types import SimpleNamespace

import pytest
import torch

from imuru_pl.errors import UserError
from imuru_pl.models.generation import StopRule, StopTracker, join_styles, pad_latents
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.style_encoders import STYLE_ENCODERS
from imuru_pl.models.tokenizer import encode_texts

TINY_T5 = {"d_model": 32, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16, "d_ff": 64}
PAD = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])


def tiny_model(style_enc: str = "full", **kwargs) -> Imuru:
    torch.manual_seed(0)
    return Imuru(t5=TINY_T5, style_enc=style_enc, **kwargs).eval()


def requests(widths=(6, 11, 3), texts=("first line", "a second, longer line", "third")):
    gen = torch.Generator().manual_seed(3)
    ids, text_mask = encode_texts(list(texts))
    style, style_mask = pad_latents([torch.randn(w, 8, generator=gen) for w in widths])
    return ids, text_mask, style, style_mask


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("style_enc", ["full", "mlp2"])
def test_cached_generation_equals_full_recompute(style_enc, batch_size):
    model = tiny_model(style_enc)
    inputs = [x[:batch_size] for x in requests()]
    cached, cached_lengths = model.generate(*inputs, max_new_columns=50, stop=None)
    full, full_lengths = model.generate_full_recompute(*inputs, max_new_columns=50, stop=None)
    assert cached.shape == (batch_size, 50, 8)
    assert cached_lengths.tolist() == full_lengths.tolist() == [50] * batch_size
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


def test_a_cap_of_one_column_writes_one_column():
    model = tiny_model()
    cached, lengths = model.generate(*requests(), max_new_columns=1, stop=None)
    full, _ = model.generate_full_recompute(*requests(), max_new_columns=1, stop=None)
    assert cached.shape == (3, 1, 8) and lengths.tolist() == [1, 1, 1]
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("style_enc", STYLE_ENCODERS)
def test_a_request_generates_the_same_alone_or_in_a_padded_batch(style_enc):
    model = tiny_model(style_enc)
    ids, text_mask, style, style_mask = requests()
    together, _ = model.generate(ids, text_mask, style, style_mask, max_new_columns=20, stop=None)
    for i in range(3):
        t, s = int(text_mask[i].sum()), int(style_mask[i].sum())
        alone, _ = model.generate(
            ids[i : i + 1, :t],
            text_mask[i : i + 1, :t],
            style[i : i + 1, :s],
            style_mask[i : i + 1, :s],
            max_new_columns=20,
            stop=None,
        )
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=0)


def test_stop_tracker_stops_per_sample_and_crops_trailing_blanks():
    rule = StopRule(PAD, threshold=0.9)
    tracker = StopTracker(batch=3, max_columns=40, channels=8, rule=rule, like=PAD)
    ink = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])  # orthogonal to PAD
    for step in range(40):
        rows = [
            ink if step < 5 or step >= 14 else PAD,  # 5 ink, 9 blank (stops), then ink never written
            ink,  # never blank
            PAD if step % 10 != 9 else ink,  # only 9 of every 10 blank, ink last: stops at 9 blanks
        ]
        tracker.update(torch.stack(rows) * 2.0)  # scale does not matter to a cosine
        if tracker.all_done():
            break
    columns, lengths = tracker.result()
    assert tracker.active.tolist() == [False, True, False]
    assert lengths.tolist() == [5, 40, 0]
    assert columns.shape == (3, 40, 8)
    torch.testing.assert_close(columns[0, :5], (ink * 2.0).expand(5, 8))
    torch.testing.assert_close(columns[0, 5:], PAD.expand(35, 8))  # finished rows show blank
    torch.testing.assert_close(columns[2], PAD.expand(40, 8))


def test_eight_of_ten_blank_does_not_stop():
    rule = StopRule(PAD, threshold=0.9, window=10, min_hits=9)
    tracker = StopTracker(batch=1, max_columns=30, channels=8, rule=rule, like=PAD)
    ink = -PAD
    for step in range(30):
        tracker.update((PAD if step % 5 else ink).unsqueeze(0))  # 8 of every 10 blank
    assert tracker.active.tolist() == [True]
    assert tracker.result()[1].tolist() == [26]


def test_model_stops_on_the_padding_latent_and_not_otherwise():
    model = tiny_model()
    with torch.no_grad():
        model.t5_to_vae.weight.zero_()  # every generated column is now latent_mean
    inputs = requests()
    model.set_latent_stats(mean=PAD * 0.5, padding_latent=PAD, stop_threshold=0.9)
    columns, lengths = model.generate(*inputs, max_new_columns=64)
    assert lengths.tolist() == [0, 0, 0] and columns.shape[1] == 0
    model.set_latent_stats(mean=-PAD * 0.5)  # now every column is far from blank
    columns, lengths = model.generate(*inputs, max_new_columns=64)
    assert lengths.tolist() == [64, 64, 64]
    torch.testing.assert_close(columns, (-PAD * 0.5).expand(3, 64, 8))


def test_multiple_style_images_join_into_one_prefix():
    model = tiny_model()
    gen = torch.Generator().manual_seed(5)
    first, second = torch.randn(4, 8, generator=gen), torch.randn(7, 8, generator=gen)
    joined = join_styles([first, second])
    assert joined.shape == (11, 8)
    ids, text_mask = encode_texts(["same text"])
    a, _ = model.generate(
        ids, text_mask, joined[None], torch.ones(1, 11, dtype=torch.bool), max_new_columns=10, stop=None
    )
    b, _ = model.generate(
        ids, text_mask, first[None], torch.ones(1, 4, dtype=torch.bool), max_new_columns=10, stop=None
    )
    assert not torch.allclose(a, b, atol=1e-3)


def test_generation_errors_are_user_errors():
    model = tiny_model()
    ids, text_mask, style, style_mask = requests()
    with pytest.raises(UserError, match="style"):
        model.generate(ids, text_mask, style, torch.zeros_like(style_mask), stop=None)
    with pytest.raises(UserError, match="max_new_columns"):
        model.generate(ids, text_mask, style, style_mask, max_new_columns=0, stop=None)


def test_generation_restores_training_mode():
    model = tiny_model().train()
    model.generate(*requests(), max_new_columns=3, stop=None)
    assert model.training


def test_save_then_load_gives_identical_generations(tmp_path):
    model = tiny_model("mlp", label_noise=0.1, trailing_blank_columns=7, max_new_columns=30)
    model.set_latent_stats(mean=torch.linspace(-1, 1, 8), std=2.0, padding_latent=PAD, stop_threshold=0.5)
    inputs = requests()
    expected = model.generate(*inputs)
    model.save_pretrained(tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["t5"]["d_model"] == 32 and config["style_enc"] == "mlp" and config["stop_threshold"] == 0.5
    loaded = Imuru.from_pretrained(tmp_path / "export")
    got = loaded.generate(*inputs)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    assert loaded.trailing_blank_columns == 7 and loaded.label_noise == 0.1


def test_vae_numbers_travel_with_the_state_dict():
    """A checkpoint's state_dict alone restores the latent statistics and the stop rule."""
    vae = SimpleNamespace(
        latent_mean=torch.full((8,), 0.3),
        latent_std=torch.full((8,), 2.0),
        padding_latent=PAD,
        stop_threshold=0.7,
    )
    model = tiny_model()
    assert model.stop_rule() is None
    model.use_vae_stats(vae)
    fresh = tiny_model()
    fresh.load_state_dict(model.state_dict())
    rule = fresh.stop_rule()
    assert rule is not None and rule.threshold == pytest.approx(0.7)
    torch.testing.assert_close(rule.padding_latent, PAD)
    torch.testing.assert_close(fresh.latent_std, torch.full((8,), 2.0))


def test_loading_a_missing_or_broken_directory_names_it(tmp_path):
    with pytest.raises(UserError, match="nowhere"):
        Imuru.from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(UserError, match="broken"):
        Imuru.from_pretrained(broken)
    tiny_model().save_pretrained(broken)
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match="broken"):
        Imuru.from_pretrained(broken)
    tiny_model().save_pretrained(broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="broken"):
        Imuru.from_pretrained(broken)
