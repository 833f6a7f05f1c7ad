"""Otsu binarisation for BFID/BKID: compare shapes of ink, not paper colour or stroke greys."""

from __future__ import annotations

import numpy as np
from PIL import Image

from imuru_pl.data.image import otsu_threshold, to_rgb


def binarize(image: Image.Image) -> Image.Image:
    """Black ink on white paper, as RGB; the grey level is luminance, which keeps coloured ink dark."""
    gray = np.asarray(to_rgb(image).convert("L"))
    paper = gray > otsu_threshold(gray)
    return Image.fromarray(np.where(paper, 255, 0).astype(np.uint8), mode="L").convert("RGB")
