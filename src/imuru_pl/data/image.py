"""Images from outside the project (style lines, scans, photos) turned into model-ready line tensors.

Any file PIL opens, of any mode and size, becomes a (C, 64, w) float tensor in [-1, 1] with white
paper (+1) and dark ink. Everything a user can get wrong here (a missing path, a file that is not an
image, an empty or blank image, a sliver a few pixels high) is reported as one `UserError` sentence.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from imuru_pl.data.batch import LINE_HEIGHT
from imuru_pl.errors import UserError
from imuru_pl.visual import tensor_to_image  # noqa: F401  (re-exported: it lives in visual.py)

log = logging.getLogger(__name__)

MIN_SOURCE_HEIGHT = 8  # px: below this a "line" carries no readable strokes
MIN_INK_FRACTION = 1e-3  # share of dark pixels below which an image counts as blank


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, or raise a one-sentence UserError naming it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Image file not found: {path}.")
    if not path.is_file():
        raise UserError(f"Expected an image file but {path} is a directory.")
    if path.stat().st_size == 0:
        raise UserError(f"Image file {path} is empty (0 bytes).")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path} is not a readable image ({type(err).__name__}).") from err


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto white paper, 16/32-bit gray rescaled."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.full_like(arr, 255.0)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        paper = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, img)
    return img.convert("RGB")


def normalize_background(gray: np.ndarray, mode: str = "stretch", ink_percentile: float = 2.0,
                         paper_percentile: float = 75.0) -> np.ndarray:
    """Bring paper to white and ink to dark on a [0, 255] float array.

    `stretch` maps the paper level (a high percentile: most of a line is paper) to 255 and the ink
    level (a low percentile) to 0, clipping; `binarize` thresholds with Otsu; `none` leaves it.
    """
    if mode == "none":
        return gray
    if mode == "binarize":
        return np.where(gray > otsu_threshold(np.clip(gray, 0, 255).astype(np.uint8)), 255.0, 0.0)
    if mode != "stretch":
        raise UserError(f"Unknown background mode {mode!r}; use stretch, binarize or none.")
    ink, paper = np.percentile(gray, ink_percentile), np.percentile(gray, paper_percentile)
    if paper - ink < 1.0:
        return np.full_like(gray, 255.0)
    return np.clip((gray - ink) / (paper - ink) * 255.0, 0.0, 255.0)


def otsu_threshold(gray: np.ndarray) -> int:
    """Grey level t (uint8 image) maximising the between-class variance of {<= t} (ink) and {> t} (paper).

    Ties (a gap in the histogram) take the middle of the tied levels, so a clean two-level image splits
    halfway between its levels. A single-level image returns that level minus one (all paper) when it is
    light, else that level (all ink).
    """
    if gray.dtype != np.uint8:
        raise ValueError(f"otsu_threshold expects a uint8 image, got {gray.dtype}")
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)[:-1]  # pixels at or below t, for t = 0..254
    w1 = hist.sum() - w0
    s0 = np.cumsum(hist * levels)[:-1]
    s1 = (hist * levels).sum() - s0
    valid = (w0 > 0) & (w1 > 0)
    if not valid.any():
        level = int(np.flatnonzero(hist)[0])
        return level - 1 if level >= 128 else level
    between = np.zeros_like(w0)
    between[valid] = w0[valid] * w1[valid] * (s0[valid] / w0[valid] - s1[valid] / w1[valid]) ** 2
    best = np.flatnonzero(np.isclose(between, between.max(), rtol=1e-12, atol=0.0))
    return int(round(best.mean()))


def load_line(source: str | Path | Image.Image, channels: int = 3, *, max_width: int | None = 1024,
              background: str = "stretch", name: str | None = None) -> torch.Tensor:
    """A style or handwriting line from a file or PIL image -> (channels, 64, w) tensor in [-1, 1].

    Scaled to 64 px high keeping aspect; background normalised (see `normalize_background`);
    lines wider than `max_width` after scaling keep their left `max_width` px (a style needs a few
    words, not a page), with a warning.
    """
    if channels not in (1, 3):
        raise UserError(f"Images can be loaded with 1 or 3 channels, not {channels}.")
    img = open_image(source) if not isinstance(source, Image.Image) else source
    label = name or (str(source) if not isinstance(source, Image.Image) else "the image")
    width, height = img.size
    if height < MIN_SOURCE_HEIGHT or width < MIN_SOURCE_HEIGHT:
        raise UserError(
            f"{label} is {width} x {height} px; a handwriting line needs at least "
            f"{MIN_SOURCE_HEIGHT} px in each direction."
        )
    rgb = to_rgb(img)
    new_width = max(MIN_SOURCE_HEIGHT, round(width * LINE_HEIGHT / height))
    if max_width is not None and new_width > max_width:
        # Crop in source pixels before resizing so a 20,000 px line costs no more than a short one.
        keep = max(1, round(max_width * height / LINE_HEIGHT))
        log.warning("%s is %d px wide at 64 px high; keeping its left %d px as the style.",
                    label, new_width, max_width)
        rgb = rgb.crop((0, 0, keep, height))
        new_width = max_width
    rgb = rgb.resize((new_width, LINE_HEIGHT), Image.Resampling.LANCZOS)
    arr = np.asarray(rgb, dtype=np.float64)
    gray = arr.mean(axis=2)
    if background != "none":
        fixed = normalize_background(gray, background)
        if channels == 3:
            # Keep colour where there is ink but lift the paper to white like the gray channel.
            scale = np.where(gray > 0, fixed / np.maximum(gray, 1e-6), 0.0)
            arr = np.clip(arr * scale[..., None], 0.0, 255.0)
        gray = fixed
    if (gray < 128).mean() < MIN_INK_FRACTION:
        raise UserError(f"{label} looks blank: no handwriting was found in it.")
    data = gray[None] if channels == 1 else np.transpose(arr, (2, 0, 1))
    return torch.from_numpy(data / 127.5 - 1.0).float()


def stack_lines(lines: list[Image.Image], gap: int = 8) -> Image.Image:
    """Stack line images top to bottom, left-aligned, on white: one page image."""
    width = max(img.width for img in lines)
    height = sum(img.height for img in lines) + gap * (len(lines) - 1)
    mode = "RGB" if any(img.mode == "RGB" for img in lines) else "L"
    page = Image.new(mode, (width, height), "white")
    y = 0
    for img in lines:
        page.paste(img.convert(mode), (0, y))
        y += img.height + gap
    return page
