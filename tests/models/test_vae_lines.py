"""Shared pieces of the VAE tests: a tiny real AutoencoderKL and pixel-aligned rendered lines."""

from __future__ import annotations

import fontpkg_kalam
import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw, ImageFont

from imuru_pl.data.batch import LineBatch, LineSample, collate_lines
from imuru_pl.models.vae import LineVAE
from imuru_pl.models.vae_module import VAEModule, start_white

FONT = fontpkg_kalam.ROOT / "files" / "Kalam-Regular.ttf"
PAPER = (236, 226, 200)
INK = (30, 40, 120)


def tiny_autoencoder(in_channels: int = 3, seed: int = 0, channels=(8, 8, 16, 16)) -> AutoencoderKL:
    """A real diffusers AutoencoderKL with the line layout (4 blocks, 1 latent channel) and few channels."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=1,
        latent_channels=1,
        block_out_channels=list(channels),
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1,
        norm_num_groups=4,
        mid_block_add_attention=False,
        sample_size=64,
        scaling_factor=1.0,
    )


def render_line(text: str, left: int = 8, right: int = 8, size: int = 40) -> LineSample:
    """A 64 px line: `style` ink on coloured paper (3 channels), `target` the same line clean (1 channel)."""
    font = ImageFont.truetype(str(FONT), size)
    x0, y0, x1, y1 = font.getbbox(text)
    width = left + (x1 - x0) + right
    mask = Image.new("L", (width, 64), 0)
    ImageDraw.Draw(mask).text((left - x0, (64 - (y1 - y0)) // 2 - y0), text, font=font, fill=255)
    alpha = np.asarray(mask, dtype=np.float32)[None] / 255.0
    clean = 1.0 - 2.0 * alpha
    paper = np.array(PAPER, dtype=np.float32)[:, None, None] / 127.5 - 1
    ink = np.array(INK, dtype=np.float32)[:, None, None] / 127.5 - 1
    style = paper * (1 - alpha) + ink * alpha
    return LineSample(
        style=torch.from_numpy(style),
        target=torch.from_numpy(clean),
        text=text,
        writer="kalam",
        style_text=text,
        style_key=text,
        target_key=text,
    )


TEXTS = [
    "hello world",
    "a quick brown fox",
    "jumps over",
    "the lazy dog",
    "minimum",
    "quiet zebras",
    "seven",
    "walking home today",
]


def line_batch(texts: list[str] = TEXTS) -> LineBatch:
    return collate_lines([render_line(t) for t in texts])


def trained_vae(steps: int = 20, seed: int = 0) -> LineVAE:
    """A tiny VAE fitted for a few steps on crops of the TEXTS lines, as VAEModule trains it."""
    torch.manual_seed(seed)
    vae = start_white(LineVAE(tiny_autoencoder(seed=seed)))
    module = VAEModule(vae, edge_weight=1.0, crop_width=128)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    batch = line_batch()
    for _ in range(steps):
        inputs, targets = module.training_inputs(batch)
        loss = module.losses(inputs, targets, sample=True)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return vae.eval()
