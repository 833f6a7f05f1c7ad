"""Frozen-VAE latents for a `LineBatch`: per-sample masks, trailing blank columns, optional cache.

The VAE never trains while Imuru does, so the posterior (mean, std) of every training image is a
fixed function of the image. With `cache=True` it is computed once per image key and kept on the
CPU; each step then only samples `mean + std * noise`, which is what re-encoding would give.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from imuru_pl.data.batch import COLUMN_PX, LineBatch
from imuru_pl.models.alignment import batch_letters
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.vae import LineVAE

if TYPE_CHECKING:
    from imuru_pl.models.imuru import Imuru

# White px appended on the right before encoding, so the last real column of every image sees paper
# rather than the convolutions' zero padding.
ENCODE_MARGIN_PX = 16


def column_counts(widths: Tensor) -> Tensor:
    """Latent columns that cover each true pixel width (ceil(width / 8))."""
    return torch.div(widths + COLUMN_PX - 1, COLUMN_PX, rounding_mode="floor")


def length_mask(lengths: Tensor, size: int) -> Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class LatentEncoder:
    """Turns padded batch images into latent column sequences and masks for the Imuru model."""

    def __init__(self, vae: LineVAE, cache: bool = False):
        self.vae = vae
        self.use_cache = cache
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    @torch.no_grad()
    def posterior(self, images: Tensor, widths: Tensor, keys: list[str] | None = None) -> tuple[Tensor, Tensor]:
        """(mean, std), each (B, n, 8) with n = images.shape[-1] / 8; cached per key when enabled.

        Columns past an image's own width hold the padding latent (std 0).
        """
        n = images.shape[-1] // COLUMN_PX
        if self.use_cache and keys is not None:
            missing = [i for i, key in enumerate(keys) if key not in self._cache]
            for i, (mean, std) in zip(missing, self._encode_each(images[missing], widths[missing])):
                self._cache[keys[i]] = (mean.cpu(), std.cpu())
            rows = [self._cache[key] for key in keys]
        else:
            rows = self._encode_each(images, widths)
        pad = self.vae.padding_latent.to(images.device)
        mean = pad.expand(len(rows), n, -1).clone()
        std = torch.zeros_like(mean)
        for i, (m, s) in enumerate(rows):
            mean[i, : len(m)] = m.to(images.device)
            std[i, : len(s)] = s.to(images.device)
        return mean, std

    def _encode_each(self, images: Tensor, widths: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Encode every image alone at its own width (+ a white margin).

        The VAE's group norms pool over the whole width, so encoding inside a padded batch would make
        a line's latents depend on its batch mates; alone, they depend on the line only (as at
        generation time, where a style image is encoded by itself).

        Always in the VAE's own precision, also inside a mixed-precision training step
        (`trainer.precision=bf16-mixed`): the latents (and the cache) are the same whatever the T5 trains
        in, and on CPU the small per-image convolutions run slower in bfloat16 than in float32.
        """
        rows = []
        with torch.autocast(images.device.type, enabled=False):
            for image, count in zip(images, column_counts(widths).tolist()):
                crop = image[None, :, :, : count * COLUMN_PX]
                padded = torch.nn.functional.pad(crop, (0, ENCODE_MARGIN_PX), value=1.0)
                mean, std = self.vae.encode_posterior(padded)
                rows.append((mean[0, :count].float(), std[0, :count].float()))
        return rows

    def _sample(self, mean: Tensor, std: Tensor, sample: bool) -> Tensor:
        return mean + std * torch.randn_like(std) if sample else mean

    def style(self, images: Tensor, widths: Tensor, keys: list[str] | None = None,
              sample: bool = True) -> tuple[Tensor, Tensor]:
        """Style columns (B, m, 8) and mask (B, m): True on each image's own columns."""
        mean, std = self.posterior(images, widths, keys)
        mask = length_mask(column_counts(widths).to(mean.device), mean.shape[1])
        return self._sample(mean, std, sample), mask

    def target(self, images: Tensor, widths: Tensor, keys: list[str] | None = None,
               sample: bool = True) -> tuple[Tensor, Tensor]:
        """Target columns (B, n, 8) and column counts (B,).

        Columns past each image's own width are set to the VAE's padding latent exactly (rather than
        the encoding of white batch padding), so every line ends in the same blank the stop rule uses.
        """
        mean, std = self.posterior(images, widths, keys)
        columns = self._sample(mean, std, sample)
        counts = column_counts(widths).to(columns.device)
        pad = self.vae.padding_latent.to(device=columns.device, dtype=columns.dtype)
        outside = ~length_mask(counts, columns.shape[1])
        columns[outside] = pad
        return columns, counts

    def model_inputs(self, model: Imuru, batch: LineBatch, sample: bool) -> tuple[dict[str, Tensor], Tensor]:
        """The keyword arguments of `model(...)` for a batch (text ids and masks, style columns, target
        columns with trailing blanks, each column's letter when the model aligns letters), on the model's device, and the target's column counts (B,)."""
        device = model.latent_mean.device
        style, style_mask = self.style(batch.style, batch.style_widths, batch.style_keys, sample)
        target, counts = self.target(batch.target, batch.target_widths, batch.target_keys, sample)
        target, target_mask = model.pad_target(target, counts)  # + trailing blank columns
        text_ids, text_mask = encode_texts(batch.texts)
        inputs = dict(text_ids=text_ids.to(device), text_mask=text_mask.to(device),
                      style=style, style_mask=style_mask, target=target, target_mask=target_mask)
        if model.letters is not None:  # the renderer's letter starts; real lines: spread evenly
            inputs["letter_index"] = batch_letters(batch, counts, target.shape[1]).to(device)
        return inputs, counts
