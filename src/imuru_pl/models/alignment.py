"""Auxiliary losses that teach Imuru which letter it is writing (docs/legibility.md).

Autoregressive text-to-speech meets the same problem as Imuru (a decoder of continuous frames that
must find its place in a text) and these are its remedies, written for latent columns:

- `guided_attention_loss`: the decoder's cross-attention should stay near the diagonal that runs from
  the first letter at the first column to the last letter at the last written column (Tachibana et al.,
  2018). Attention mass far from it is penalised; nothing is forced where the diagonal is right.
- `stop_loss`: an end-of-line probability per column, 1 on the blank columns after the text.
- `ctc_loss`: the characters of the text read from the decoder states with CTC, so the states must
  know which letter each column belongs to.
- aligned letters (`column_letters` ... `duration_loss`): no alignment to learn at all. The renderer knows
  where each letter starts; every decoder step is told which letter it draws and where inside it, and a
  duration head learns each letter's width to make that plan at generation (FastSpeech's length regulator,
  in front of an autoregressive decoder).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from imuru_pl.data.batch import COLUMN_PX, LineBatch
from imuru_pl.errors import UserError
from imuru_pl.models.tokenizer import BYTE_OFFSET, PAD_ID


def diagonal_penalty(rows: Tensor, text_lengths: Tensor, rows_total: int, columns_total: int,
                     sigma: float) -> Tensor:
    """(B, rows_total, columns_total) weights 1 - exp(-(i/L - j/N)^2 / 2 sigma^2) of Tachibana et al.

    `rows` (B,) = written decoder steps N per sample; `text_lengths` (B,) = letters L per sample. Positions
    are taken at cell centres, so the first step and the first letter sit at 0.5/N and 0.5/L.
    """
    j = (torch.arange(rows_total, device=rows.device, dtype=torch.float32)[None, :, None] + 0.5)
    i = (torch.arange(columns_total, device=rows.device, dtype=torch.float32)[None, None, :] + 0.5)
    j = j / rows.clamp_min(1)[:, None, None].float()
    i = i / text_lengths.clamp_min(1)[:, None, None].float()
    return 1.0 - torch.exp(-((i - j) ** 2) / (2.0 * sigma**2))


def guided_attention_loss(cross_attentions: Sequence[Tensor], prefix_length: int, steps: Tensor,
                          text_mask: Tensor, sigma: float) -> Tensor:
    """Mean off-diagonal cross-attention mass per written decoder step (0 = all on the diagonal).

    `cross_attentions`: one (B, H, T, S) tensor per decoder layer (T = prefix + steps); `steps` (B,) = the
    decoder steps that write the text (trailing blank steps and padding are left free); `text_mask` (B, S).
    Averaged over layers and heads: every head may attend anywhere, on average near the diagonal.
    """
    attention = torch.stack([a[:, :, prefix_length:].float() for a in cross_attentions]).mean(dim=(0, 2))
    batch, rows_total, columns_total = attention.shape
    letters = (text_mask.sum(1) - 1).clamp_min(1)  # the EOS token sits just past the last letter
    weights = diagonal_penalty(steps, letters, rows_total, columns_total, sigma)
    row_mask = torch.arange(rows_total, device=steps.device)[None, :] < steps[:, None]
    cell_mask = row_mask[:, :, None] & text_mask.bool()[:, None, :]
    penalty = (attention * weights * cell_mask).sum()
    return penalty / row_mask.sum().clamp_min(1)


def stop_loss(logits: Tensor, lengths: Tensor, loss_mask: Tensor) -> Tensor:
    """BCE of per-column end-of-line logits (B, n): target 1 from column `lengths` on, over `loss_mask`."""
    ended = torch.arange(logits.shape[1], device=logits.device)[None, :] >= lengths[:, None]
    per_column = F.binary_cross_entropy_with_logits(logits.float(), ended.float(), reduction="none")
    weights = loss_mask.float()
    return (per_column * weights).sum() / weights.sum().clamp_min(1.0)


def ctc_targets(text_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Byte ids without EOS and padding, concatenated (as F.ctc_loss takes them), and their lengths."""
    keep = text_ids >= BYTE_OFFSET
    return text_ids[keep], keep.sum(1)


def ctc_loss(logits: Tensor, lengths: Tensor, text_ids: Tensor) -> Tensor:
    """CTC of per-column character logits (B, n, V) against the texts; the pad id is the CTC blank.

    Lines narrower than CTC needs (fewer columns than letters plus repeats) are left out
    (`zero_infinity`); the loss is the mean over lines of the per-letter negative log-likelihood.
    """
    targets, target_lengths = ctc_targets(text_ids)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (n, B, V)
    return F.ctc_loss(log_probs, targets, lengths.clamp_max(logits.shape[1]), target_lengths,
                      blank=PAD_ID, reduction="mean", zero_infinity=True)


# -- aligned letters: the text-to-column alignment given by the renderer, predicted at generation -------

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
