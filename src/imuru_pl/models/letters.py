"""Aligned letters for Imuru (`model.letters.enabled=true`; docs/legibility.md).

No text-to-column alignment to learn: the renderer records where each letter starts (`Pen.draw`; real lines:
letters spread evenly), so every decoder step is told, added to its input, the encoder state of the letter
its columns draw and its place inside that letter. A duration head (`DurationPlanner`: the letters' encoder
states and a convolutional summary of the style columns) learns each letter's width in columns and, at
generation, plans the line: which letter each column draws, and where the line ends. FastSpeech's length
regulator in front of the autoregressive decoder.

A width head (`width_planner`, fitted after training by `duration_fit`) is a second planner that gives only
each line's width: the line is written with the trained plan and resampled to it (`pipeline.write_lines`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from imuru_pl.errors import UserError
from imuru_pl.models.alignment import duration_loss, durations_to_letters, letter_durations, letter_phase
from imuru_pl.models.tokenizer import BYTE_OFFSET

LATENT_CHANNELS = 8
STEP_LETTERS = ("mean", "columns")  # how a decoder step's r columns pass their letters on (`step_inputs`)
WIDTH_SCALE_RANGE = (0.5, 2.0)  # how far the style line's own text may rescale a plan (`width_scale`)
SETTINGS = {"enabled": True, "step_letters": "mean", "duration_loss_weight": 1.0, "width_head": False}

TextEncoder = Callable[[Tensor, Tensor], Tensor]  # (ids, mask) -> encoder states: `Imuru.encode_text`
StyleText = tuple[Tensor, Tensor] | None  # (ids, mask) of what each style line says


@dataclass
class LetterPlan:
    """The letters each decoder step draws, planned before the first step."""

    inputs: Tensor  # (B, steps, d): each step's letter inputs (`AlignedLetters.step_inputs`)
    lengths: Tensor  # (B,) planned columns of each line
    steps: int  # decoder steps to run (the longest line's)
    stopped: Tensor  # (B,) bool: the planned line fits under the column cap

    def step_input(self, step: int) -> Tensor:
        return self.inputs[:, step : step + 1]

    def finish(self, columns: Tensor, padding_latent: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Written columns (B, n, 8) cut to the planned lengths: columns past a line's end become the padding
        latent (as with the stop rule) when it is known. Returns columns, lengths, stopped."""
        lengths = self.lengths.clamp_max(columns.shape[1])
        if padding_latent is not None:
            past = torch.arange(columns.shape[1], device=columns.device)[None, :] >= lengths[:, None]
            columns = torch.where(past[..., None], padding_latent.to(columns), columns)
        return columns, lengths, self.stopped


class DurationPlanner(nn.Module):
    """The duration head and its view of the hand: log(1 + columns) of every letter."""

    def __init__(self, d_model: int):
        super().__init__()
        self.style_columns = nn.Conv1d(LATENT_CHANNELS, d_model // 2, kernel_size=5, padding=2)
        self.style_summary = nn.Linear(d_model, d_model)
        self.duration_head = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 1))

    def summary(self, style: Tensor, style_mask: Tensor) -> Tensor:
        """(B, d) what the head knows of the hand: a convolution over 5 neighbouring normalised style columns
        (40 px, about two letters: how dense the hand writes), averaged and max-pooled over the style line."""
        mask = style_mask[:, None, :].to(style.dtype)
        columns = style.transpose(1, 2) * mask  # padding read as zeros, as past a line's end
        features = torch.relu(self.style_columns(columns)) * mask
        mean = features.sum(-1) / mask.sum(-1).clamp_min(1.0)
        return self.style_summary(torch.cat([mean, features.amax(-1)], dim=-1))

    def log_durations(self, encoded: Tensor, summary: Tensor) -> Tensor:
        """(B, L) predicted log(1 + columns) of each text token, from its encoder state and the hand."""
        return self.duration_head(encoded + summary[:, None]).squeeze(-1)

    def columns(self, encoded: Tensor, text_ids: Tensor, summary: Tensor) -> Tensor:
        """(B, L) float columns of each letter (0 for EOS and padding)."""
        widths = torch.expm1(self.log_durations(encoded, summary)).clamp_min(0)
        return torch.where(text_ids >= BYTE_OFFSET, widths, torch.zeros_like(widths))


def letters_settings(letters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The checked `model.letters` block, or None when it is off (None, or enabled: false)."""
    if letters is None:
        return None
    unknown = set(letters) - set(SETTINGS)
    if unknown:
        raise UserError(f"Unknown model.letters setting {sorted(unknown)[0]!r}; known: {', '.join(SETTINGS)}.")
    settings = {**SETTINGS, **dict(letters)}
    if not settings["enabled"]:
        return None
    if settings["step_letters"] not in STEP_LETTERS:
        raise UserError(f"model.letters.step_letters must be one of {', '.join(STEP_LETTERS)} (how a decoder "
                        f"step's r columns pass their letters on), got {settings['step_letters']!r}.")
    if float(settings["duration_loss_weight"]) < 0:
        raise UserError("model.letters.duration_loss_weight is a loss weight and cannot be negative, got "
                        f"{settings['duration_loss_weight']}.")
    return settings


class AlignedLetters(nn.Module):
    """Each decoder step's letter inputs (training: the renderer's letters; generation: the plan)."""

    def __init__(self, d_model: int, reduction_factor: int, step_letters: str = "mean",
                 duration_loss_weight: float = 1.0, width_head: bool = False, enabled: bool = True):
        super().__init__()
        self.reduction_factor = int(reduction_factor)
        self.step_letters = step_letters
        self.duration_loss_weight = float(duration_loss_weight)
        self.letter_proj = nn.Linear(d_model, d_model)
        self.phase_proj = nn.Linear(2, d_model)
        self.step_letters_proj = None
        if step_letters == "columns" and reduction_factor > 1:  # each of a step's r columns its own input
            r = reduction_factor
            self.step_letters_proj = nn.Linear(r * d_model, d_model)
            with torch.no_grad():  # starts as the mean of the r columns' inputs
                self.step_letters_proj.weight.copy_(torch.eye(d_model).repeat(1, r) / r)
                self.step_letters_proj.bias.zero_()
        self.planner = DurationPlanner(d_model)
        self.width_planner = DurationPlanner(d_model) if width_head else None

    def config(self) -> dict[str, Any]:
        return {"enabled": True, "step_letters": self.step_letters,
                "duration_loss_weight": self.duration_loss_weight, "width_head": self.width_planner is not None}

    # -- training ----------------------------------------------------------------------------------

    def step_inputs(self, encoded: Tensor, letter_index: Tensor, text_mask: Tensor) -> Tensor:
        """(B, n) letter of each column -> (B, n / r, d): per decoder step, its letters' encoder states and
        places inside them: averaged over the step's r columns, or with `step_letters="columns"` projected
        from all r in order (which column draws which letter)."""
        batch, columns = letter_index.shape
        d_model, r = encoded.shape[-1], self.reduction_factor
        letters = encoded.gather(1, letter_index[..., None].expand(-1, -1, d_model))
        phase = letter_phase(letter_index, encoded.shape[1], text_mask.sum(1) - 1).to(encoded.dtype)
        inputs = self.letter_proj(letters) + self.phase_proj(phase)
        if self.step_letters_proj is not None:
            return self.step_letters_proj(inputs.reshape(batch, columns // r, r * d_model))
        return inputs.reshape(batch, columns // r, r, d_model).mean(dim=2)

    def duration_loss(self, encoded: Tensor, text_ids: Tensor, letter_index: Tensor, lengths: Tensor,
                      style: Tensor, style_mask: Tensor, planner: DurationPlanner | None = None) -> Tensor:
        """The head's loss (unweighted) against the columns each letter owns among each target's `lengths` (B,)
        written columns (`letter_index` (B, n)); `style` normalised. `planner`: the width head's instead."""
        planner = planner or self.planner
        columns = torch.arange(letter_index.shape[1], device=lengths.device)
        written = columns[None, :] < lengths[:, None]
        own = torch.where(written, letter_index, torch.full_like(letter_index, text_ids.shape[1]))
        durations = letter_durations(own, text_ids.shape[1] + 1)[:, :-1]  # EOS and padding: not counted
        predicted = planner.log_durations(encoded, planner.summary(style, style_mask))
        return duration_loss(predicted, durations, text_ids)

    # -- generation --------------------------------------------------------------------------------

    def scaled_columns(self, encode: TextEncoder, encoded: Tensor, text_ids: Tensor, style: Tensor,
                       style_mask: Tensor, style_text: StyleText = None,
                       planner: DurationPlanner | None = None) -> Tensor:
        """(B, L) float planned columns of each letter; `style_text` scales them by `width_scale`."""
        planner = planner or self.planner
        summary = planner.summary(style, style_mask)
        widths = planner.columns(encoded, text_ids, summary)
        if style_text is not None:
            widths = widths * self.width_scale(encode, planner, summary, style_mask, *style_text)[:, None]
        return widths

    def letter_widths(self, encode: TextEncoder, encoded: Tensor, text_ids: Tensor, style: Tensor,
                      style_mask: Tensor, style_text: StyleText = None,
                      planner: DurationPlanner | None = None) -> Tensor:
        """(B, L) long: the planned width in columns of each text token (0 for EOS and padding)."""
        return self.scaled_columns(encode, encoded, text_ids, style, style_mask, style_text, planner).round().long()

    @staticmethod
    def width_scale(encode: TextEncoder, planner: DurationPlanner, summary: Tensor, style_mask: Tensor,
                    style_ids: Tensor, style_text_mask: Tensor) -> Tensor:
        """(B,) the style line's width in columns over the width the head plans for its text, clamped to
        [1/2, 2]: how much wider or narrower than predicted this hand writes; 1 where the style text is empty."""
        planned = planner.columns(encode(style_ids, style_text_mask), style_ids, summary).sum(1)
        measured = style_mask.sum(1).to(planned.dtype)
        known = (style_ids >= BYTE_OFFSET).any(1) & (planned > 0)
        scale = (measured / planned.clamp_min(1e-6)).clamp(*WIDTH_SCALE_RANGE)
        return torch.where(known, scale, torch.ones_like(scale))

    def plan(self, encode: TextEncoder, encoded: Tensor, text_ids: Tensor, text_mask: Tensor, style: Tensor,
             style_mask: Tensor, columns: int, style_text: StyleText = None) -> LetterPlan:
        """The planned letters of every decoder step (inputs computed once) and each line's planned length,
        for at most `columns` columns."""
        widths = self.letter_widths(encode, encoded, text_ids, style, style_mask, style_text)
        planned = widths.sum(1)
        lengths = planned.clamp_max(columns)
        steps = max(1, -(-int(lengths.max()) // self.reduction_factor))
        letters = durations_to_letters(widths, text_mask, steps * self.reduction_factor)
        return LetterPlan(self.step_inputs(encoded, letters, text_mask), lengths, steps, planned <= columns)

    def line_columns(self, encode: TextEncoder, encoded: Tensor, text_ids: Tensor, style: Tensor,
                     style_mask: Tensor, style_text: StyleText = None) -> Tensor | None:
        """(B,) long: each line's width as the width head plans it (at least 1), or None without one. The
        letters' widths are summed before rounding (a hand of 1.4 columns a letter would otherwise be 1)."""
        if self.width_planner is None:
            return None
        widths = self.scaled_columns(encode, encoded, text_ids, style, style_mask, style_text, self.width_planner)
        return widths.sum(1).round().long().clamp_min(1)

    def add_width_head(self) -> DurationPlanner:
        """A width head that starts as a copy of the trained planner (replacing any earlier one)."""
        self.width_planner = copy.deepcopy(self.planner)
        return self.width_planner

    def drop_width_head(self) -> None:
        self.width_planner = None
