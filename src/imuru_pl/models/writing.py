"""Writing lines: padded style images + texts in, line images out, with the model and its frozen VAE.

`ImuruPipeline` (pipeline.py) wraps these for users; training, evaluation and the legibility callback call
them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from imuru_pl.data.batch import COLUMN_PX
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.latents import LatentEncoder
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.vae import LineVAE


@dataclass
class WrittenLines:
    images: list[Tensor]  # (1, 64, w_i) in [-1, 1], on the CPU
    lengths: Tensor  # (B,) latent columns of each line (w_i = 8 * length; an empty line is 1 blank column)
    stopped: Tensor  # (B,) bool: the line ended by itself, not at the column cap


def write_lines(model: Imuru, vae: LineVAE, style: Tensor, style_widths: Tensor, texts: list[str],
                max_new_columns: int | None = None, style_texts: list[str] | None = None) -> list[Tensor]:
    """Padded style images (B, C, 64, W) + widths + B texts -> B line images (1, 64, w_i) on the CPU.

    Style latents are the posterior means (deterministic for a given image); generation stops per
    line on the VAE's padding latent (or where its letter plan ends) and trailing blank columns are cropped.
    A model with a width head (`planned_line_columns`) has each written line resampled horizontally to the
    width that head plans.
    `style_texts` (optional, what each style image says) fits a letter plan's widths to the hand
    (`AlignedLetters.width_scale`; models with letters only); with a width head it scales only the width
    each line is resampled to, and the letters are drawn at the widths the model trained with.
    """
    return write_lines_detailed(model, vae, style, style_widths, texts, max_new_columns, style_texts).images


@torch.inference_mode()
def write_lines_detailed(model: Imuru, vae: LineVAE, style: Tensor, style_widths: Tensor, texts: list[str],
                         max_new_columns: int | None = None, style_texts: list[str] | None = None) -> WrittenLines:
    """`write_lines` plus each line's length and whether it stopped by itself (for evaluation)."""
    device = next(model.parameters()).device
    vae.to(device)
    style_cols, style_mask = LatentEncoder(vae).style(style.to(device), style_widths.to(device), sample=False)
    text_ids, text_mask = encode_texts(texts)
    style_text = None
    if style_texts is not None:
        if len(style_texts) != len(texts):
            raise ValueError(f"{len(style_texts)} style texts for {len(texts)} lines")
        style_text = tuple(t.to(device) for t in encode_texts(style_texts))
    columns, lengths, stopped = model.generate(  # with a width head the style text sets only the line's width
        text_ids.to(device), text_mask.to(device), style_cols, style_mask,
        max_new_columns=max_new_columns or model.max_new_columns, return_stopped=True,
        style_text=None if has_width_head(model) else style_text,
    )
    decoded = vae.decode(columns).cpu() if columns.shape[1] else None
    blank = torch.ones(1, 64, COLUMN_PX)  # a line with nothing written is one blank column
    images = [blank if decoded is None or n == 0 else decoded[i, :, :, : COLUMN_PX * n]
              for i, n in enumerate(lengths.tolist())]
    planned = planned_line_columns(model, text_ids.to(device), text_mask.to(device), style_cols, style_mask,
                                   style_text)
    if planned is not None:  # written at the model's own widths, drawn at the width head's
        cap = max_new_columns or model.max_new_columns
        lengths = torch.where(lengths > 0, planned.clamp_max(cap), lengths)
        images = [resample_width(image, COLUMN_PX * n) if n else image
                  for image, n in zip(images, lengths.tolist())]
    return WrittenLines(images, lengths.cpu(), stopped.cpu())


def has_width_head(model: Imuru) -> bool:
    return model.letters is not None and model.letters.width_planner is not None


def planned_line_columns(model: Imuru, text_ids: Tensor, text_mask: Tensor, style: Tensor, style_mask: Tensor,
                         style_text: tuple[Tensor, Tensor] | None = None) -> Tensor | None:
    """(B,) long: each line's width in columns as the model's width head plans it (at least 1), or None
    without one. Arguments as in `Imuru.generate`."""
    if not has_width_head(model):
        return None
    letters = model.letters
    with torch.no_grad(), model._eval_mode():
        encoded = model.encode_text(text_ids, text_mask)
        return letters.line_columns(model.encode_text, encoded, text_ids, model.normalise(style), style_mask,
                                    style_text)


def resample_width(image: Tensor, width: int) -> Tensor:
    """A line image (C, 64, w) stretched or squeezed horizontally to `width` px (antialiased bilinear)."""
    if image.shape[-1] == width:
        return image
    resized = torch.nn.functional.interpolate(image[None], size=(image.shape[-2], width), mode="bilinear",
                                              align_corners=False, antialias=True)
    return resized[0].clamp(-1.0, 1.0)
