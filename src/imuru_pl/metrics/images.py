"""Image preparation shared by the metrics, following the HWD protocol's transforms."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from imuru_pl.data.image import to_rgb

WHITE = (255, 255, 255)


def pad_to_square(image: Image.Image) -> Image.Image:
    """Pad an image narrower than it is high with white on both sides (HWD protocol)."""
    width, height = image.size
    if width >= height:
        return image
    canvas = Image.new(image.mode, (height, height), WHITE if image.mode == "RGB" else 255)
    canvas.paste(image, ((height - width) // 2, 0))
    return canvas


def resize_to_height(
    image: Image.Image, height: int, resample: int = Image.Resampling.NEAREST
) -> Image.Image:
    """Keep the aspect ratio; the width is truncated as in the protocol."""
    width = max(1, int(height * image.width / image.height))
    return image.resize((width, height), resample)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float in [0, 1], white = 1, no mean/std normalisation (the HWD backbone expects that)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def hwd_input(image: Image.Image, height: int = 32) -> torch.Tensor:
    """HWD preprocessing: RGB, pad to a square if narrow, height 32 (nearest), [0, 1] tensor."""
    return to_tensor(resize_to_height(pad_to_square(to_rgb(image)), height))


def left_square(image: Image.Image, size: int) -> Image.Image:
    """The protocol's FID input: the left H x H square of the line, resized to size x size (nearest).

    Lines narrower than high are padded with white first, so the crop never reaches outside the image.
    """
    image = pad_to_square(to_rgb(image))
    return image.crop((0, 0, image.height, image.height)).resize((size, size), Image.Resampling.NEAREST)
