"""Absolute positions for Imuru (`model.positions=true`; docs/legibility.md).

T5 has only relative position biases, so without these a decoder step cannot tell how far along the line it
is, nor a letter where it sits in the text. Scaled sinusoids ("Attention is all you need"), one learned scale
for the letters and one for the decoder steps, are added to the encoder's token embeddings and to every
decoder step's input. `NoPositions` is the reference's decoder: nothing added, no parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from imuru_pl.errors import UserError

MAX_POSITIONS = 4096  # letters or decoder steps covered by the table


def sinusoids(length: int, channels: int) -> Tensor:
    """(length, channels) sine/cosine position table of "Attention is all you need"."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rates = torch.exp(-math.log(10000.0) * torch.arange(0, channels, 2, dtype=torch.float32) / channels)
    table = torch.zeros(length, channels)
    table[:, 0::2] = torch.sin(position * rates)
    table[:, 1::2] = torch.cos(position * rates[: channels // 2])
    return table


class PositionEmbeddings(nn.Module):
    """Adds scaled sinusoids to letters (`text`) and to decoder steps (`steps`, counted from SOS = 0)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.text_scale = nn.Parameter(torch.ones(()))
        self.column_scale = nn.Parameter(torch.ones(()))
        self.register_buffer("table", sinusoids(MAX_POSITIONS, d_model), persistent=False)

    def _rows(self, start: int, length: int) -> Tensor:
        if start + length > MAX_POSITIONS:
            raise UserError(f"model.positions cover {MAX_POSITIONS} positions; this input needs "
                            f"{start + length} (a shorter text or fewer columns).")
        return self.table[start : start + length]

    def text(self, embeds: Tensor) -> Tensor:
        """(B, L, d) token embeddings + the letters' positions."""
        return embeds + self.text_scale * self._rows(0, embeds.shape[-2]).to(embeds)

    def steps(self, embeds: Tensor, start: int) -> Tensor:
        """(..., n, d) decoder step inputs whose first is step `start` + the steps' positions."""
        return embeds + self.column_scale * self._rows(start, embeds.shape[-2]).to(embeds)


class NoPositions(nn.Module):
    """The reference: T5's relative position biases only."""

    def text(self, embeds: Tensor) -> Tensor:
        return embeds

    def steps(self, embeds: Tensor, start: int) -> Tensor:
        return embeds


def build_positions(enabled: bool, d_model: int) -> nn.Module:
    return PositionEmbeddings(d_model) if enabled else NoPositions()
