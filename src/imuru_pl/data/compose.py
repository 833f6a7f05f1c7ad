"""Put one ink mask on clean white (the target) or on the writer's paper (the style image).

Both come from the same mask, so the two versions of a line are pixel-aligned; only the paper and the ink
colour differ. Paper shading and grain are drawn from a generator seeded per line: renders are reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from imuru_pl.data.render import WriterStyle

TEXTURE_CELL_PX = 24  # size of the paper's shading blobs


def clean(mask: np.ndarray, style: WriterStyle) -> np.ndarray:
    """Gray ink (the writer's ink luminance) on pure white: uint8 (64, w)."""
    alpha = mask.astype(np.float32) / 255.0
    return np.rint(255.0 - alpha * (255.0 - style.ink_gray)).astype(np.uint8)


def on_paper(mask: np.ndarray, style: WriterStyle, rng: np.random.Generator) -> np.ndarray:
    """Coloured ink on the writer's paper with low-frequency shading and grain: uint8 (64, w, 3)."""
    height, width = mask.shape
    paper = np.broadcast_to(np.asarray(style.paper_rgb, dtype=np.float32), (height, width, 3)).copy()
    if style.paper_texture > 0:
        cells = rng.normal(0.0, 1.0, size=(height // TEXTURE_CELL_PX + 2, width // TEXTURE_CELL_PX + 2))
        shading = Image.fromarray(cells.astype(np.float32)).resize((width, height), Image.Resampling.BICUBIC)
        paper *= 1.0 + style.paper_texture * np.asarray(shading)[:, :, None]
    if style.noise > 0:
        paper += rng.normal(0.0, style.noise * 255.0, size=(height, width, 1)).astype(np.float32)
    alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
    image = paper * (1.0 - alpha) + np.asarray(style.ink_rgb, dtype=np.float32) * alpha
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) -> float (C, H, W) in [-1, 1], white = +1."""
    array = image[None] if image.ndim == 2 else np.transpose(image, (2, 0, 1))
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(127.5).sub_(1.0)
