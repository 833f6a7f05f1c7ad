"""Style images + texts in, handwriting images out: the exported model a user loads and calls.

An exported model is one directory: the Imuru module's `config.json` + `model.safetensors` and the
frozen VAE as a diffusers directory in `vae/` (with its measured padding latent and stop threshold).
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from imuru_pl.data.batch import COLUMN_PX, pad_images
from imuru_pl.data.image import load_line, stack_lines, tensor_to_image
from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.latents import LatentEncoder
from imuru_pl.models.reference_checkpoint import is_reference_checkpoint, load_reference_checkpoint
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.vae import LineVAE

log = logging.getLogger(__name__)

VAE_SUBDIR = "vae"
# Characters per generated line when wrapping long text: synthetic lines average ~17 px per
# character, so this keeps a wrapped line well inside the column cap.
PX_PER_CHAR_BUDGET = 24


@dataclass
class WrittenLines:
    images: list[Tensor]  # (1, 64, w_i) in [-1, 1], on the CPU
    lengths: Tensor  # (B,) latent columns of each line (w_i = 8 * length; an empty line is 1 blank column)
    stopped: Tensor  # (B,) bool: the line ended by itself, not at the column cap


def write_lines(model: Imuru, vae: LineVAE, style: Tensor, style_widths: Tensor, texts: list[str],
                max_new_columns: int | None = None, style_texts: list[str] | None = None) -> list[Tensor]:
    """Padded style images (B, C, 64, W) + widths + B texts -> B line images (1, 64, w_i) on the CPU.

    Style latents are the posterior means (deterministic for a given image); generation stops per
    line on the VAE's padding latent (or the model's stop head) and trailing blank columns are cropped.
    A model with a width head (`Imuru.line_columns`) has each written line resampled horizontally to the
    width that head plans.
    `style_texts` (optional, what each style image says) fits a letter plan's widths to the hand
    (`Imuru.width_scale`; models with `aligned_letters` only); with a width head it scales only the width
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
        style_text=None if model.width_head else style_text,
    )
    decoded = vae.decode(columns).cpu() if columns.shape[1] else None
    blank = torch.ones(1, 64, COLUMN_PX)  # a line with nothing written is one blank column
    images = [blank if decoded is None or n == 0 else decoded[i, :, :, : COLUMN_PX * n]
              for i, n in enumerate(lengths.tolist())]
    planned = model.line_columns(text_ids.to(device), text_mask.to(device), style_cols, style_mask, style_text)
    if planned is not None:  # written at the model's own widths, drawn at the width head's
        cap = max_new_columns or model.max_new_columns
        lengths = torch.where(lengths > 0, planned.clamp_max(cap), lengths)
        images = [resample_width(image, COLUMN_PX * n) if n else image
                  for image, n in zip(images, lengths.tolist())]
    return WrittenLines(images, lengths.cpu(), stopped.cpu())


def resample_width(image: Tensor, width: int) -> Tensor:
    """A line image (C, 64, w) stretched or squeezed horizontally to `width` px (antialiased bilinear)."""
    if image.shape[-1] == width:
        return image
    resized = torch.nn.functional.interpolate(image[None], size=(image.shape[-2], width), mode="bilinear",
                                              align_corners=False, antialias=True)
    return resized[0].clamp(-1.0, 1.0)


class ImuruPipeline:
    def __init__(self, model: Imuru, vae: LineVAE, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vae = vae.freeze().to(self.device)

    # -- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.vae.save_pretrained(directory / VAE_SUBDIR)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> ImuruPipeline:
        directory = Path(directory)
        if not directory.is_dir():
            raise UserError(f"Model directory not found: {directory}.")
        if is_reference_checkpoint(directory):  # a published Imuru checkpoint (Hugging Face layout)
            return load_reference_checkpoint(directory, device)
        if not (directory / VAE_SUBDIR).is_dir():
            raise UserError(f"{directory} is not an exported imuru-pl model: it has no '{VAE_SUBDIR}/' folder.")
        return cls(Imuru.from_pretrained(directory), LineVAE.from_pretrained(directory / VAE_SUBDIR), device)

    # -- generation ----------------------------------------------------------------------------
    @property
    def max_chars_per_line(self) -> int:
        return max(8, self.model.max_new_columns * COLUMN_PX // PX_PER_CHAR_BUDGET)

    def load_styles(self, styles: list[str | Path | Image.Image]) -> Tensor:
        """Load style images and join them side by side: several images form one style prefix."""
        lines = [load_line(s, channels=3) for s in styles]
        return torch.cat(lines, dim=-1) if len(lines) > 1 else lines[0]

    def generate_lines(self, style: Tensor, texts: list[str], max_new_columns: int | None = None,
                       style_text: str | None = None) -> list[Tensor]:
        """One style (C, 64, w) and several single-line texts -> line images (1, 64, w_i) in [-1, 1].
        `style_text`: what the style image says (optional), to fit the letters' widths to the hand."""
        images, widths = pad_images([style] * len(texts))
        style_texts = None if style_text is None else [self.check_style_text(style_text)] * len(texts)
        return write_lines(self.model, self.vae, images, widths, texts, max_new_columns, style_texts)

    def check_style_text(self, style_text: str) -> str:
        """The style image's text as the model takes it: one line (a model without a letter plan refuses it
        in `Imuru.generate`)."""
        text = " ".join(str(style_text).split())
        if not text:
            raise UserError("The style text is empty: give what the style image says, or leave it out.")
        return text

    def wrap(self, text: str) -> list[str]:
        """Split text into lines the model can write: paragraphs kept, long ones wrapped at words."""
        text = text.strip()
        if not text:
            raise UserError("The text to write is empty.")
        lines: list[str] = []
        for paragraph in text.splitlines():
            paragraph = " ".join(paragraph.split())
            if paragraph:
                lines.extend(textwrap.wrap(paragraph, self.max_chars_per_line, break_long_words=True))
        return lines

    def write(self, style: Tensor, text: str, style_text: str | None = None) -> Image.Image:
        """Write `text` in a loaded style (C, 64, w); text longer than a line becomes a page. `style_text`
        (optional): what the style image says, to fit the letters' widths to the hand."""
        lines = self.wrap(text)
        unseen = sorted({c for c in text if not (c.isascii() and c.isprintable()) and c not in "\n\t"})
        if unseen:
            log.warning("The text has characters outside printable ASCII that the model may never have seen: "
                        "%s; writing them as best it can.", " ".join(unseen))
        if len(lines) > 1:
            log.info("Text wrapped into %d lines of at most %d characters.", len(lines), self.max_chars_per_line)
        images = [tensor_to_image(img) for img in self.generate_lines(style, lines, style_text=style_text)]
        return images[0] if len(images) == 1 else stack_lines(images)

    def __call__(self, styles: str | Path | Image.Image | list, text: str, style_text: str | None = None) -> Image.Image:
        """Write `text` in the style of `styles` (one image or several side by side). `style_text`
        (optional): what the style images say, in order, to fit the letters' widths to the hand."""
        return self.write(self.load_styles(styles if isinstance(styles, list) else [styles]), text, style_text)
