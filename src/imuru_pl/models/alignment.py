"""The text-to-column alignment of aligned letters (`letters.py`, docs/legibility.md): which letter each
latent column draws (`column_letters`, from the renderer's letter starts; real lines: spread evenly), how many
columns each letter owns, each column's place inside its letter, and the duration loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from imuru_pl.data.batch import COLUMN_PX, LineBatch
from imuru_pl.errors import UserError
from imuru_pl.models.tokenizer import BYTE_OFFSET

BLANK_COLUMNS = 10.0  # the width the blank columns after a line's text count as in `letter_phase`


def column_letters(starts: Sequence[Tensor], texts: Sequence[str], lengths: Tensor, width: int) -> Tensor:
    """(B, width) long: the text token each latent column draws; columns past a line's own -> its EOS token.

    `starts[b]` holds one start (px) per character of `texts[b]` (`Pen.draw`); a column belongs to the
    character whose span holds the column's centre, and stands for the first UTF-8 byte of that character.
    """
    centres = torch.arange(width, dtype=torch.float32) * COLUMN_PX + COLUMN_PX / 2
    rows = []
    for start, text, count in zip(starts, texts, lengths.tolist()):
        if len(start) != len(text):
            raise UserError(f"The line {text!r} has {len(start)} letter starts for {len(text)} characters.")
        eos = len(text.encode("utf-8"))
        tokens = torch.full((width,), eos, dtype=torch.long)
        if text:
            first_bytes = torch.tensor([0, *itertools.accumulate(len(c.encode("utf-8")) for c in text)][:-1])
            letter = (torch.searchsorted(start.float().contiguous(), centres, right=True) - 1).clamp_min(0)
            tokens[:count] = first_bytes[letter[:count]]
        rows.append(tokens)
    return torch.stack(rows).to(lengths.device)


def even_letter_starts(texts: Sequence[str], widths: Tensor) -> list[Tensor]:
    """Letter starts for lines whose letters' places are unknown (real data): spread evenly over each line."""
    return [torch.arange(len(text), dtype=torch.float32) * (float(width) / max(len(text), 1))
            for text, width in zip(texts, widths.tolist())]


def batch_letters(batch: LineBatch, lengths: Tensor, width: int) -> Tensor:
    """`column_letters` of a batch's targets: the renderer's letter starts, or letters spread evenly over each
    line where the data has none (real lines)."""
    starts = batch.target_starts or even_letter_starts(batch.texts, batch.target_widths)
    return column_letters(starts, batch.texts, lengths.cpu(), width).to(lengths.device)


def letter_durations(letter_index: Tensor, tokens: int) -> Tensor:
    """(B, tokens) float: how many columns of `letter_index` (B, n) each text token owns."""
    ones = torch.ones_like(letter_index, dtype=torch.float32)
    return torch.zeros(letter_index.shape[0], tokens, device=letter_index.device).scatter_add_(1, letter_index, ones)


def letter_phase(letter_index: Tensor, tokens: int, eos: Tensor) -> Tensor:
    """(B, n, 2): each column's place inside its letter (0-1, at the column's centre) and log(1 + the
    letter's width in columns): with the letter itself, what a column needs to know to draw its slice.

    The blank columns after the text (`eos` (B,): each line's EOS token) count as one letter of
    `BLANK_COLUMNS` columns, however many the batch's padding adds: a line's inputs never depend on its
    batch mates."""
    positions = torch.arange(letter_index.shape[1], device=letter_index.device).expand_as(letter_index)
    first = torch.ones_like(letter_index, dtype=torch.bool)
    first[:, 1:] = letter_index[:, 1:] != letter_index[:, :-1]
    start = torch.where(first, positions, torch.zeros_like(positions)).cummax(dim=1).values
    width = letter_durations(letter_index, tokens).gather(1, letter_index)
    width = torch.where(letter_index == eos[:, None], torch.full_like(width, BLANK_COLUMNS), width)
    return torch.stack([(positions - start + 0.5) / width, torch.log1p(width)], dim=-1)


def durations_to_letters(durations: Tensor, text_mask: Tensor, width: int) -> Tensor:
    """Columns per text token (B, L) long -> the letter of each of `width` columns (B, width): each token
    repeated its duration, the line's EOS token after the last letter, cut at `width`."""
    eos = (text_mask.sum(1) - 1).tolist()
    rows = []
    for count, eos_index in zip(durations, eos):
        tokens = torch.repeat_interleave(torch.arange(len(count), device=count.device), count)[:width]
        rows.append(F.pad(tokens, (0, width - len(tokens)), value=eos_index))
    return torch.stack(rows)


def duration_loss(predicted: Tensor, durations: Tensor, text_ids: Tensor) -> Tensor:
    """MSE of predicted log(1 + columns) per character against the renderer's, over the letters (not EOS/pad)."""
    letters = (text_ids >= BYTE_OFFSET).float()
    squared = (predicted.float() - torch.log1p(durations)).pow(2)
    return (squared * letters).sum() / letters.sum().clamp_min(1.0)
