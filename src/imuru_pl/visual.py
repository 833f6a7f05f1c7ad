"""Image grids for previews, TensorBoard and READMEs: rows of line images side by side; [-1, 1] tensors as
PIL images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def tensor_to_image(image: torch.Tensor) -> Image.Image:
    """(C, H, W) or (H, W) tensor in [-1, 1] -> 8-bit PIL image (L or RGB)."""
    image = image.detach().float().cpu()
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]
    arr = ((image.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).numpy()
    if arr.ndim == 3:
        return Image.fromarray(np.transpose(arr, (1, 2, 0)), mode="RGB")
    return Image.fromarray(arr, mode="L")


def as_image(item: Image.Image | torch.Tensor) -> Image.Image:
    return item if isinstance(item, Image.Image) else tensor_to_image(item)


def rows_grid(rows: list[list[Image.Image | torch.Tensor]], gap: int = 8, background: int = 200) -> Image.Image:
    """Lay out rows of line images (PIL or [-1, 1] tensors), left-aligned, on a light-gray canvas."""
    images = [[as_image(item).convert("RGB") for item in row] for row in rows]
    heights = [max(img.height for img in row) for row in images]
    widths = [sum(img.width for img in row) + gap * (len(row) - 1) for row in images]
    canvas = Image.new("RGB", (max(widths) + 2 * gap, sum(heights) + gap * (len(rows) + 1)), (background,) * 3)
    y = gap
    for row, height in zip(images, heights):
        x = gap
        for img in row:
            canvas.paste(img, (x, y))
            x += img.width + gap
        y += height + gap
    return canvas


def to_chw(image: Image.Image) -> np.ndarray:
    """PIL RGB -> uint8 array (3, H, W) as TensorBoard's add_image expects."""
    return np.transpose(np.asarray(image.convert("RGB")), (2, 0, 1))
