"""Style images + texts in, handwriting images out: the exported model a user loads and calls.

An exported model is one directory: the Imuru module's `config.json` + `model.safetensors` and the
frozen VAE as a diffusers directory in `vae/` (with its measured padding latent and stop threshold). A model
with a letter plan may also carry a line reader in `reader/` (the bundled starter does): when no style text
is given, it reads the style line, and what it reads fits the line's width to the hand (`read_style`).
"""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from imuru_pl.bundled import resolve
from imuru_pl.data.batch import COLUMN_PX, pad_images
from imuru_pl.data.image import load_line, stack_lines, tensor_to_image
from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.reader import LineReader
from imuru_pl.models.reference_checkpoint import VAE_SUBDIR, load_model_dir, load_reference_model
from imuru_pl.models.vae import LineVAE
from imuru_pl.models.writing import WrittenLines, resample_width, write_lines, write_lines_detailed

__all__ = ["READER_SUBDIR", "VAE_SUBDIR", "ImuruPipeline", "WrittenLines", "load_reference_checkpoint", "resample_width",
           "write_lines", "write_lines_detailed"]

log = logging.getLogger(__name__)

# Characters per generated line when wrapping long text: synthetic lines average ~17 px per
# character, so this keeps a wrapped line well inside the column cap.
PX_PER_CHAR_BUDGET = 24
READER_SUBDIR = "reader"  # an exported model's own line reader (optional): style lines read for their widths


class ImuruPipeline:
    def __init__(self, model: Imuru, vae: LineVAE, device: str | torch.device = "cpu",
                 reader: LineReader | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vae = vae.freeze().to(self.device)
        if reader is not None and model.letters is None:
            raise UserError("A line reader fits planned letter widths to the hand, and this model plans none "
                            "(it was trained without model.letters).")
        self.reader = None if reader is None else reader.to(self.device)

    # -- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.vae.save_pretrained(directory / VAE_SUBDIR)
        if self.reader is not None:
            self.reader.save_pretrained(directory / READER_SUBDIR)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> ImuruPipeline:
        """An exported imuru-pl model or a published Imuru checkpoint (Hugging Face layout), whichever the
        directory holds; with the line reader of its `reader/` folder when it has one."""
        model, vae = load_model_dir(directory)
        reader_dir = resolve(directory) / READER_SUBDIR
        reader = LineReader.from_pretrained(reader_dir, key="the model's reader") if reader_dir.is_dir() else None
        return cls(model, vae, device, reader)

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
        `style_text`: what the style image says (optional), to fit the letters' widths to the hand; without
        it, what the model's own reader reads in the style image, when it has one."""
        if style_text is None:
            style_text = self.read_style(style)
        images, widths = pad_images([style] * len(texts))
        style_texts = None if style_text is None else [self.check_style_text(style_text)] * len(texts)
        return write_lines(self.model, self.vae, images, widths, texts, max_new_columns, style_texts)

    def read_styles(self, styles: Tensor, widths: Tensor) -> list[str] | None:
        """What the pipeline's reader reads in a batch of style lines (B, C, 64, W) of `widths` px: the style
        texts the lines' widths are fitted to. None without a reader."""
        if self.reader is None:
            return None
        return self.reader.read_lines(styles.to(self.device), widths)

    def read_style(self, style: Tensor) -> str | None:
        """`read_styles` for one loaded style (C, 64, w), logged; None without a reader or when it reads
        nothing (the plan is then left as it is)."""
        read = self.read_styles(style[None], torch.tensor([style.shape[-1]]))
        if read is None:
            return None
        text = " ".join(read[0].split())
        if text:
            log.info("The reader reads the style image as %r; the line's width is fitted to that.", text)
        else:
            log.warning("The reader reads nothing in the style image; the letters' widths are not fitted to it.")
        return text or None

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


def load_reference_checkpoint(
    directory: str | os.PathLike, device: str | torch.device = "cpu", vae_config: dict[str, Any] | None = None
) -> ImuruPipeline:
    """A published Imuru checkpoint directory as a ready `ImuruPipeline` (offline, local path)."""
    model, vae = load_reference_model(directory, vae_config=vae_config)
    return ImuruPipeline(model, vae, device)
