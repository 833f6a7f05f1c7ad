"""Does the VAE keep letters readable? OCR CER of its reconstructions against the original lines.

The frozen VAE bounds what Imuru can write: a letter the decoder cannot draw back from latents is lost
whatever the T5 predicts. This reads held-out lines before and after a VAE round trip (clean line in,
posterior mean, decode) with the configured OCR engine and reports both CERs and their difference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from imuru_pl.data.image import tensor_to_image
from imuru_pl.errors import UserError
from imuru_pl.metrics.cer import cer
from imuru_pl.metrics.evaluator import get_ocr
from imuru_pl.metrics.settings import settings_from_config


@torch.no_grad()
def reconstruction_cer(vae, dataloader, max_lines: int, metrics: Any = None,
                       group: Callable[[str], str] | None = None) -> dict[str, Any]:
    """CER of `max_lines` target lines of `dataloader` and of their reconstructions (case-sensitive).

    `group` maps a writer id to a group name (e.g. its font family): the result then also holds
    `per_group` = {name: {"cer_original", "cer_reconstruction", "lines"}}."""
    device = next(vae.parameters()).device
    originals, reconstructions, texts, writers = [], [], [], []
    for batch in dataloader:
        keep = min(len(batch), max_lines - len(texts))
        images = batch.target[:keep].to(device)
        decoded = vae(images).cpu()
        for i in range(keep):
            width = int(batch.target_widths[i])
            originals.append(tensor_to_image(batch.target[i, :, :, :width]))
            reconstructions.append(tensor_to_image(decoded[i, :, :, :width]))
        texts += list(batch.texts[:keep])
        writers += list(batch.writers[:keep])
        if len(texts) >= max_lines:
            break
    if not texts:
        raise UserError("No lines to read: the reconstruction CER needs a non-empty split.")
    ocr = get_ocr(settings_from_config(metrics))
    read_original, read_reconstruction = ocr.read(originals), ocr.read(reconstructions)
    original, reconstructed = cer(read_original, texts), cer(read_reconstruction, texts)
    result: dict[str, Any] = {"cer_original": original, "cer_reconstruction": reconstructed,
                              "delta_cer": reconstructed - original, "lines": len(texts)}
    if group is not None:
        names = [group(w) for w in writers]
        result["per_group"] = {}
        for name in sorted(set(names)):
            rows = [i for i, n in enumerate(names) if n == name]
            refs = [texts[i] for i in rows]
            result["per_group"][name] = {
                "cer_original": cer([read_original[i] for i in rows], refs),
                "cer_reconstruction": cer([read_reconstruction[i] for i in rows], refs),
                "lines": len(rows),
            }
    return result
