"""A small line recogniser (CNN + CTC): the VAE stage's recognition loss reads reconstructions with it.

Emuru trains its VAE with a recognition loss; here a reader trained on the clean training lines stays frozen
while the VAE trains and reads its reconstructions (`vae.train.reader_weight`, docs/vae.md); it also reads style
lines for their widths (`heldout.style_reader`). No recogniser ships offline, so the project trains its own
(`imuru_pl.tasks.train_reader`).

A line (B, 1, 64, W) in [-1, 1] becomes one frame per 4 px (two per latent column): four conv stages
bring the height to 4 rows, a linear layer turns each frame into a feature vector, two residual 1-D
convolutions give it about two letters of context, and a linear head gives logits over the byte ids
of `imuru_pl.models.tokenizer` (the pad id is the CTC blank).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from imuru_pl.data.batch import LINE_HEIGHT
from imuru_pl.errors import UserError
from imuru_pl.models.tokenizer import BYTE_OFFSET, EOS_ID, PAD_ID, VOCAB_SIZE, decode_ids
from imuru_pl.models.weights_dir import CONFIG_NAME, WEIGHTS_NAME, is_weights_dir, save_weights_dir
from imuru_pl.models.vae import convert_channels

FRAME_PX = 4  # pixels of width per output frame


def _stage(c_in: int, c_out: int, pool: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.MaxPool2d(pool))



def ctc_targets(text_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Byte ids without EOS and padding, concatenated (as F.ctc_loss takes them), and their lengths."""
    keep = text_ids >= BYTE_OFFSET
    return text_ids[keep], keep.sum(1)


def ctc_loss(logits: Tensor, lengths: Tensor, text_ids: Tensor) -> Tensor:
    """CTC of per-frame character logits (B, n, V) against the texts; the pad id is the CTC blank.

    Lines narrower than CTC needs (fewer frames than letters plus repeats) are left out
    (`zero_infinity`); the loss is the mean over lines of the per-letter negative log-likelihood.
    """
    targets, target_lengths = ctc_targets(text_ids)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (n, B, V)
    return F.ctc_loss(log_probs, targets, lengths.clamp_max(logits.shape[1]), target_lengths,
                      blank=PAD_ID, reduction="mean", zero_infinity=True)

class LineReader(nn.Module):
    def __init__(self, channels: Sequence[int] = (16, 32, 64, 96), hidden: int = 192, context_kernel: int = 5):
        super().__init__()
        if len(channels) != 4 or min(channels) < 1 or hidden < 1 or context_kernel < 1 or context_kernel % 2 == 0:
            raise UserError("reader.arch needs four positive channel counts, a positive hidden size and an "
                            f"odd context_kernel; got {list(channels)}, {hidden}, {context_kernel}.")
        self.channels, self.hidden, self.context_kernel = [int(c) for c in channels], int(hidden), int(context_kernel)
        pools = [(2, 2), (2, 2), (2, 1), (2, 1)]  # 64 x W -> 4 x W/4
        ins = [1, *self.channels[:-1]]
        self.features = nn.Sequential(*[_stage(i, o, p) for i, o, p in zip(ins, self.channels, pools)])
        self.project = nn.Linear(self.channels[-1] * (LINE_HEIGHT // 16), self.hidden)
        self.context = nn.ModuleList(
            nn.Conv1d(self.hidden, self.hidden, self.context_kernel, padding=self.context_kernel // 2)
            for _ in range(2))
        self.head = nn.Linear(self.hidden, VOCAB_SIZE)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 1, 64, W) gray lines in [-1, 1], W a multiple of 4 -> logits (B, W / 4, VOCAB_SIZE)."""
        if images.dim() != 4 or images.shape[1] != 1 or images.shape[2] != LINE_HEIGHT or images.shape[3] % FRAME_PX:
            raise UserError(f"The reader reads (B, 1, {LINE_HEIGHT}, W) lines with W a multiple of {FRAME_PX}; "
                            f"got shape {tuple(images.shape)}.")
        features = self.features(images)  # (B, C, 4, W/4)
        frames = self.project(features.flatten(1, 2).transpose(1, 2))  # (B, W/4, hidden)
        x = frames.transpose(1, 2)
        for conv in self.context:
            x = x + torch.relu(conv(x))
        return self.head(x.transpose(1, 2))

    def ctc(self, images: Tensor, widths: Tensor, text_ids: Tensor) -> Tensor:
        """Mean per-letter CTC loss of reading each line's text (ids as `encode_texts` gives them)."""
        return ctc_loss(self(images), torch.div(widths, FRAME_PX, rounding_mode="floor").clamp_min(1), text_ids)

    @torch.no_grad()
    def read_lines(self, images: Tensor, widths: Tensor) -> list[str]:
        """`read` for line images as batches and the pipeline hold them: any channel count (RGB becomes
        luminance), any width (white is appended up to a whole frame)."""
        gray = convert_channels(images, 1)
        short = -gray.shape[-1] % FRAME_PX
        if short:
            gray = torch.nn.functional.pad(gray, (0, short), value=1.0)
        return self.read(gray.to(next(self.parameters()).device), widths)

    @torch.no_grad()
    def read(self, images: Tensor, widths: Tensor) -> list[str]:
        """Greedy CTC reading of each line (best id per frame, repeats merged, blanks dropped)."""
        best = self(images).argmax(-1).cpu()
        texts = []
        for row, width in zip(best, widths.tolist()):
            ids = torch.unique_consecutive(row[: max(1, width // FRAME_PX)])
            texts.append(decode_ids([i for i in ids.tolist() if i not in (PAD_ID, EOS_ID)]))
        return texts

    # -- persistence ---------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"model_type": "imuru_line_reader", "channels": self.channels, "hidden": self.hidden,
                "context_kernel": self.context_kernel}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """config.json + model.safetensors in `directory`."""
        return save_weights_dir(directory, self, self.config_dict())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, key: str = "reader.pretrained") -> LineReader:
        """A reader saved by `save_pretrained`, in eval mode, frozen (no gradients to its weights); a
        directory without one is one sentence naming the config `key` that gave it."""
        directory = check_reader_dir(directory, key)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        try:
            config = json.loads(config_path.read_text())
            if config.pop("model_type", None) != "imuru_line_reader":
                raise ValueError("not a line reader config")
            reader = cls(**config)
            reader.load_state_dict(load_file(str(weights_path)), strict=True)
        except (OSError, UnicodeDecodeError, ValueError, TypeError, RuntimeError, SafetensorError) as err:
            raise UserError(f"Cannot load the line reader in {str(directory)!r}: {err}.") from err
        return reader.eval().requires_grad_(False)


def check_reader_dir(directory: str | os.PathLike, key: str = "reader.pretrained") -> Path:
    """`directory` as a Path when it holds a saved reader's two files; one sentence (naming the config
    `key` that gave it) otherwise."""
    directory = Path(directory)
    if not is_weights_dir(directory):
        raise UserError(f"{key}={str(directory)!r} is not a saved line reader "
                        f"(it needs {CONFIG_NAME} and {WEIGHTS_NAME}).")
    return directory
