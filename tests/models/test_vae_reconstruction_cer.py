"""Reconstruction CER: OCR reads lines before and after the VAE round trip (the VAE's legibility floor)."""

from __future__ import annotations

from test_vae_lines import line_batch, tiny_autoencoder

from imuru_pl.metrics.reconstruction import reconstruction_cer
from imuru_pl.models.vae import LineVAE

TEXTS = ["the quick brown fox", "seven silver spoons", "green apples and pears"]


def test_an_untrained_vae_loses_the_letters_the_originals_keep():
    vae = LineVAE(tiny_autoencoder()).eval()
    batch = line_batch(TEXTS)
    result = reconstruction_cer(vae, [batch], max_lines=2, group=lambda writer: "all")
    assert result["lines"] == 2, "max_lines is honoured"
    assert result["per_group"]["all"]["lines"] == 2
    assert result["per_group"]["all"]["cer_original"] == result["cer_original"]
    assert result["cer_original"] < 0.3
    assert result["cer_reconstruction"] > 0.8 > result["cer_original"]
    assert abs(result["delta_cer"] - (result["cer_reconstruction"] - result["cer_original"])) < 1e-9
