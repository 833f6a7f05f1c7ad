"""Imuru forward pass: shapes, gradients, padding invariance, loss masking, normalisation, config checks."""

import pytest
import torch

from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.style_encoders import STYLE_ENCODERS
from imuru_pl.models.tokenizer import encode_texts

TINY_T5 = {"d_model": 32, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16, "d_ff": 64}
TEXTS = ["a short one", "a much longer line of text", "mid size"]
STYLE_WIDTHS = [5, 9, 2]
TARGET_WIDTHS = [6, 11, 4]


def tiny_model(style_enc: str = "full", **kwargs) -> Imuru:
    torch.manual_seed(0)
    return Imuru(t5={**TINY_T5, **kwargs.pop("t5", {})}, style_enc=style_enc, **kwargs)


def padded_batch(seed: int = 1):
    """Three samples of different text, style and target widths, right-padded like a collate does."""
    gen = torch.Generator().manual_seed(seed)
    ids, text_mask = encode_texts(TEXTS)
    style = torch.randn(3, max(STYLE_WIDTHS), 8, generator=gen)
    target = torch.randn(3, max(TARGET_WIDTHS), 8, generator=gen)
    style_mask = torch.arange(style.shape[1])[None] < torch.tensor(STYLE_WIDTHS)[:, None]
    target_mask = torch.arange(target.shape[1])[None] < torch.tensor(TARGET_WIDTHS)[:, None]
    return ids, text_mask, style, style_mask, target, target_mask


def single(batch, index: int):
    """Sample `index` of a padded batch, with every padding removed."""
    ids, text_mask, style, style_mask, target, target_mask = batch
    t, s, n = int(text_mask[index].sum()), int(style_mask[index].sum()), int(target_mask[index].sum())
    return (
        ids[index : index + 1, :t],
        text_mask[index : index + 1, :t],
        style[index : index + 1, :s],
        style_mask[index : index + 1, :s],
        target[index : index + 1, :n],
        target_mask[index : index + 1, :n],
    )


@pytest.mark.parametrize("style_enc", STYLE_ENCODERS)
def test_forward_backward_reaches_every_parameter(style_enc):
    model = tiny_model(style_enc, label_noise=0.1, style_noise=0.05).train()
    batch = padded_batch()
    out = model(*batch)
    assert out.prediction.shape == batch[4].shape
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert not any("decoder.embed_tokens" in n for n in names), "unused decoder embedding must not exist"
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("style_enc", STYLE_ENCODERS)
def test_padding_does_not_change_a_sample(style_enc):
    model = tiny_model(style_enc).eval()
    batch = padded_batch()
    with torch.no_grad():
        together = model(*batch).prediction
        for index in range(3):
            alone = model(*single(batch, index)).prediction[0]
            n = TARGET_WIDTHS[index]
            torch.testing.assert_close(together[index, :n], alone, atol=1e-5, rtol=0)


def test_padding_content_is_ignored():
    """Whatever the padded columns hold, real predictions stay the same."""
    model = tiny_model("full").eval()
    batch = list(padded_batch())
    with torch.no_grad():
        before = model(*batch).prediction
        batch[2] = torch.where(batch[3].unsqueeze(-1), batch[2], torch.full_like(batch[2], 7.0))
        batch[0] = torch.where(batch[1], batch[0], torch.full_like(batch[0], 77))
        after = model(*batch).prediction
    mask = batch[5]
    torch.testing.assert_close(before[mask], after[mask], atol=1e-5, rtol=0)


def test_loss_ignores_positions_outside_the_target_mask():
    model = tiny_model("full").eval()
    batch = list(padded_batch())
    with torch.no_grad():
        loss = model(*batch).loss
        outside = batch[4].clone()
        outside[~batch[5]] += 5.0
        assert torch.allclose(model(*batch[:4], outside, batch[5]).loss, loss, atol=1e-6)
        inside = batch[4].clone()
        inside[0, 0] += 5.0
        assert not torch.allclose(model(*batch[:4], inside, batch[5]).loss, loss, atol=1e-3)


def test_target_mask_adds_trailing_blank_columns():
    model = tiny_model(trailing_blank_columns=3)
    mask = model.target_mask(torch.tensor([2, 5]), width=7)
    assert mask.sum(1).tolist() == [5, 7]
    model.set_latent_stats(padding_latent=torch.ones(8))
    target, mask = model.pad_target(torch.zeros(2, 5, 8), torch.tensor([2, 5]))
    assert target.shape == (2, 8, 8) and mask.sum(1).tolist() == [5, 8]
    assert bool((target[:, 5:] == 1).all())


def test_latent_statistics_are_applied_inside():
    """Raw latents z*std+mean with matching stats give the same loss as z with identity stats."""
    batch = padded_batch()
    mean, std = torch.linspace(-2, 2, 8), torch.linspace(0.5, 3, 8)
    plain = tiny_model().eval()
    scaled = tiny_model(latent_mean=mean, latent_std=std).eval()
    raw = list(batch)
    raw[2], raw[4] = batch[2] * std + mean, batch[4] * std + mean
    with torch.no_grad():
        a, b = plain(*batch), scaled(*raw)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.prediction * std + mean, b.prediction, atol=1e-5, rtol=1e-5)


def test_noise_only_in_training():
    model = tiny_model(label_noise=0.5, style_noise=0.5, t5={"dropout_rate": 0.0})
    batch = padded_batch()
    with torch.no_grad():
        model.eval()
        first, second = model(*batch).loss, model(*batch).loss
        assert torch.equal(first, second)
        model.train()
        assert not torch.allclose(model(*batch).loss, first)


def test_bad_settings_raise_user_error():
    with pytest.raises(UserError, match="style_enc"):
        Imuru(t5=TINY_T5, style_enc="transformer")
    with pytest.raises(UserError, match="d_mdl"):
        Imuru(t5={**TINY_T5, "d_mdl": 8})
    with pytest.raises(UserError, match="latent_std"):
        Imuru(t5=TINY_T5, latent_std=[0.0] * 8)
    with pytest.raises(UserError, match="label_noise"):
        Imuru(t5=TINY_T5, label_noise=-1)
