"""LineVAE shapes, channel handling, freezing, and saving/loading as a diffusers directory."""

from __future__ import annotations

import json
import time

import pytest
import torch
from test_vae_lines import line_batch, tiny_autoencoder

from imuru_pl.errors import UserError
from imuru_pl.models.vae import CONSTANTS_FILE, LineVAE, convert_channels


def measured_vae(in_channels: int = 3) -> LineVAE:
    vae = LineVAE(tiny_autoencoder(in_channels)).eval()
    vae.measure_stop_constants([line_batch()], blank_widths=(128, 256))
    return vae


def test_shapes_and_range():
    vae = LineVAE(tiny_autoencoder()).eval()
    images = torch.ones(2, 3, 64, 96)
    mean, std = vae.encode_posterior(images)
    assert mean.shape == std.shape == (2, 12, 8)
    assert (std > 0).all()
    columns = vae.encode(images, generator=torch.Generator().manual_seed(0))
    assert columns.shape == (2, 12, 8)
    assert torch.equal(vae.encode(images, sample=False), mean)
    decoded = vae.decode(columns * 100)  # far outside the trained range: output is still clamped
    assert decoded.shape == (2, 1, 64, 96)
    assert decoded.min() >= -1 and decoded.max() <= 1


def test_sampling_follows_generator():
    vae = LineVAE(tiny_autoencoder()).eval()
    images = line_batch(["sample"]).style
    a = vae.encode(images, generator=torch.Generator().manual_seed(3))
    b = vae.encode(images, generator=torch.Generator().manual_seed(3))
    c = vae.encode(images, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("vae_channels", [1, 3])
def test_gray_and_rgb_inputs_both_encode(vae_channels):
    vae = LineVAE(tiny_autoencoder(vae_channels)).eval()
    assert vae.in_channels == vae_channels
    batch = line_batch(["gray and colour"])
    gray, rgb = batch.target, batch.style
    assert (
        vae.encode(gray, sample=False).shape
        == vae.encode(rgb, sample=False).shape
        == (1, gray.shape[-1] // 8, 8)
    )
    # A gray line given as 1 channel or as 3 equal channels is the same image to the VAE.
    assert torch.allclose(
        vae.encode(gray, sample=False), vae.encode(gray.repeat(1, 3, 1, 1), sample=False), atol=1e-6
    )


def test_channel_conversion_values():
    rgb = torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    luma = convert_channels(rgb, 1)
    assert luma.shape == (1, 1, 2, 2)
    assert torch.allclose(luma, torch.full_like(luma, 0.299 - 0.587 + 0.5 * 0.114))
    gray = torch.rand(2, 1, 4, 4)
    assert torch.equal(convert_channels(gray, 3)[:, 2:3], gray)
    with pytest.raises(UserError, match="4 channels"):
        convert_channels(torch.rand(1, 4, 4, 4), 3)


def test_bad_image_shapes_are_user_errors():
    vae = LineVAE(tiny_autoencoder())
    with pytest.raises(UserError, match="multiple of 8"):
        vae.encode(torch.ones(1, 3, 64, 100))
    with pytest.raises(UserError, match="64"):
        vae.encode(torch.ones(1, 3, 32, 96))


def test_not_a_line_autoencoder_is_refused():
    from diffusers import AutoencoderKL

    wrong = AutoencoderKL(
        in_channels=3,
        out_channels=1,
        latent_channels=4,
        block_out_channels=[8, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=4,
    )
    with pytest.raises(UserError, match="latent_channels 1"):
        LineVAE(wrong)


def test_freeze():
    vae = LineVAE(tiny_autoencoder()).train()
    assert vae.freeze() is vae
    assert not vae.training and not vae.autoencoder.training
    assert not any(p.requires_grad for p in vae.parameters())


def test_constants_are_required_before_blank_tests():
    vae = LineVAE(tiny_autoencoder())
    with pytest.raises(UserError, match="padding latent"):
        vae.column_similarity(torch.zeros(1, 2, 8))


def test_save_then_load_gives_identical_outputs(tmp_path):
    vae = measured_vae()
    batch = line_batch(["saved and loaded"])
    directory = vae.save_pretrained(tmp_path / "vae")
    assert (directory / "config.json").is_file()
    assert (directory / "diffusion_pytorch_model.safetensors").is_file()
    stored = json.loads((directory / CONSTANTS_FILE).read_text())
    assert len(stored["padding_latent"]) == 8 and stored["stop_threshold"] == vae.stop_threshold
    assert stored["measurement"]["blank_columns"] > 0 and stored["measurement"]["ink_columns"] > 0

    loaded = LineVAE.from_pretrained(directory).eval()
    with torch.no_grad():
        for images in (batch.style, batch.target):
            assert torch.equal(vae.encode(images, sample=False), loaded.encode(images, sample=False))
            columns = vae.encode(images, sample=False)
            assert torch.equal(vae.decode(columns), loaded.decode(columns))
            assert torch.equal(vae.is_blank(columns), loaded.is_blank(columns))
    assert torch.equal(loaded.padding_latent, vae.padding_latent)
    assert torch.equal(loaded.latent_mean, vae.latent_mean) and torch.equal(loaded.latent_std, vae.latent_std)
    assert loaded.stop_threshold == vae.stop_threshold


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return measured_vae().save_pretrained(tmp_path_factory.mktemp("saved") / "vae")


def copy_of(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "copy")


def test_nonexistent_path(tmp_path):
    with pytest.raises(UserError, match="not found") as err:
        LineVAE.from_pretrained(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def test_missing_config(saved, tmp_path):
    directory = copy_of(saved, tmp_path)
    (directory / "config.json").unlink()
    with pytest.raises(UserError, match="no config.json") as err:
        LineVAE.from_pretrained(directory)
    assert str(directory) in str(err.value)


def test_corrupt_weights(saved, tmp_path):
    directory = copy_of(saved, tmp_path)
    weights = directory / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="Could not load the VAE weights") as err:
        LineVAE.from_pretrained(directory)
    assert str(directory) in str(err.value) and "\n" not in str(err.value)


def test_missing_weights(saved, tmp_path):
    directory = copy_of(saved, tmp_path)
    (directory / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="Could not load the VAE weights"):
        LineVAE.from_pretrained(directory)


def test_missing_or_broken_constants(saved, tmp_path):
    directory = copy_of(saved, tmp_path)
    (directory / CONSTANTS_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not readable JSON"):
        LineVAE.from_pretrained(directory)
    (directory / CONSTANTS_FILE).unlink()
    with pytest.raises(UserError, match=CONSTANTS_FILE):
        LineVAE.from_pretrained(directory)
    bare = LineVAE.from_pretrained(directory, require_constants=False)  # to measure them afresh
    assert bare.padding_latent is None and bare.stop_threshold is None


def test_unknown_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(UserError, match="no-such-owner/no-such-vae"):
        LineVAE.from_pretrained("no-such-owner/no-such-vae")
    assert time.monotonic() - started < 10
