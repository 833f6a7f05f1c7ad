"""Imuru: a T5 that writes VAE latent columns of a text, in the style of a prefix of style columns.

Everything here lives in latent-column space: inputs and outputs are raw VAE latents (B, n, 8), one
column per 8 px of width. Inside, latents are normalised with `latent_mean` / `latent_std` (the
VAE's measured statistics), and the loss is computed in that normalised space.

    encoder input:  the target text (byte ids)
    decoder input:  [style prefix, SOS, noisy target[:-1]]   (prefix LEFT-padded, see style_encoders)
    decoder output after the prefix -> t5_to_vae -> MSE against the clean target (masked)

The T5 encoder and decoder stacks are used directly: no lm_head and no decoder token embedding
(nothing would train them), so there is no tied-embedding d_model^-0.5 output scaling either.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Stack

from imuru_pl.errors import UserError
from imuru_pl.models.alignment import (
    ctc_loss,
    duration_loss,
    durations_to_letters,
    guided_attention_loss,
    letter_durations,
    letter_phase,
    stop_loss,
)
from imuru_pl.models.generation import CachedDecoder, StopRule, StopTracker
from imuru_pl.models.style_encoders import STYLE_ENCODERS, build_style_encoder
from imuru_pl.models.tokenizer import BYTE_OFFSET, VOCAB_SIZE
from imuru_pl.models.weights_dir import CONFIG_NAME, WEIGHTS_NAME, save_weights_dir

log = logging.getLogger(__name__)

LATENT_CHANNELS = 8  # numbers per latent column (VAE latent height 64 / 8)
FORMAT_VERSION = 1

# The `tiny` preset; `small` and `large` (conf/model/t5/) change the sizes only.
T5_DEFAULTS: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "d_model": 256,
    "num_layers": 3,
    "num_decoder_layers": 3,
    "num_heads": 4,
    "d_kv": 64,
    "d_ff": 1024,
    "dropout_rate": 0.1,
    "feed_forward_proj": "relu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
}

StopArg = StopRule | Literal["model"] | None
MAX_POSITIONS = 4096  # letters or decoder steps covered by `position_embeddings`
WIDTH_SCALE_RANGE = (0.5, 2.0)  # how far the style line's own text may rescale a letter plan (`width_scale`)


def sinusoids(length: int, channels: int) -> Tensor:
    """(length, channels) sine/cosine position table of "Attention is all you need"."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    rates = torch.exp(-math.log(10000.0) * torch.arange(0, channels, 2, dtype=torch.float32) / channels)
    table = torch.zeros(length, channels)
    table[:, 0::2] = torch.sin(position * rates)
    table[:, 1::2] = torch.cos(position * rates[: channels // 2])
    return table


@dataclass
class LetterPlan:
    """Generation with `aligned_letters`: the letters each decoder step draws, planned before the first."""

    inputs: Tensor  # (B, steps, d): each step's letter inputs (`Imuru.letter_inputs`)
    lengths: Tensor  # (B,) planned columns of each line
    steps: int  # decoder steps to run (the longest line's)
    stopped: Tensor  # (B,) bool: the planned line fits under the column cap


@dataclass
class ImuruOutput:
    loss: Tensor  # scalar: masked MSE in normalised latent space + the weighted auxiliary losses
    prediction: Tensor  # (B, n, 8) raw VAE latents predicted for each target position (teacher forcing)
    losses: dict[str, Tensor] = field(default_factory=dict)  # each term unweighted: mse, guided_attention, ...


def t5_settings(t5: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full set of T5 sizes: defaults (`tiny`) overridden by `t5`; unknown keys are refused."""
    settings = dict(T5_DEFAULTS)
    for key, value in dict(t5 or {}).items():
        if key not in T5_DEFAULTS:
            raise UserError(f"Unknown T5 setting {key!r}; known settings: {', '.join(T5_DEFAULTS)}.")
        settings[key] = value
    if settings["vocab_size"] < VOCAB_SIZE:
        raise UserError(f"t5.vocab_size must be at least {VOCAB_SIZE} (the byte tokenizer's ids).")
    return settings


ATTENTIONS = ("sdpa", "eager")
STEP_LETTERS = ("mean", "columns")  # how a decoder step's r columns pass their letters on (`letter_inputs`)


def _stack_config(settings: Mapping[str, Any], decoder: bool, attention: str = "sdpa") -> T5Config:
    """A T5 stack's config; `attention` is transformers' attention implementation (the T5 default is sdpa;
    eager returns the attention weights, which guided attention reads, and trains faster on CPU)."""
    config = T5Config(**settings, is_encoder_decoder=False, use_cache=decoder, is_decoder=decoder)
    config._attn_implementation = attention
    if decoder:
        config.num_layers = settings["num_decoder_layers"]
    return config


class Imuru(nn.Module):
    """Frozen-VAE latents in, latents out: T5 encoder over the text, T5 decoder over the columns."""

    def __init__(
        self,
        t5: Mapping[str, Any] | None = None,
        style_enc: str = "full",
        label_noise: float = 0.0,
        style_noise: float = 0.0,
        trailing_blank_columns: int = 10,
        max_new_columns: int = 256,
        stop_threshold: float | None = None,
        stop_window: int = 10,
        stop_min_hits: int = 9,
        latent_mean: float | list[float] | Tensor | None = None,
        latent_std: float | list[float] | Tensor | None = None,
        padding_latent: list[float] | Tensor | None = None,
        reduction_factor: int = 1,
        guided_attention_weight: float = 0.0,
        guided_attention_sigma: float = 0.2,
        stop_head: bool = False,
        stop_loss_weight: float = 1.0,
        stop_head_threshold: float = 0.5,
        ctc_weight: float = 0.0,
        position_embeddings: bool = False,
        aligned_letters: bool = False,
        duration_loss_weight: float = 1.0,
        duration_dropout: float = 0.0,
        letter_count_weight: float = 0.0,
        step_letters: str = "mean",
        width_head: bool = False,
        attention: str = "sdpa",
    ):
        super().__init__()
        if attention not in ATTENTIONS:
            raise UserError(f"attention must be one of {', '.join(ATTENTIONS)} (the T5's attention "
                            f"implementation), got {attention!r}.")
        if str(style_enc).lower() not in STYLE_ENCODERS:
            raise UserError(f"Unknown style_enc {style_enc!r}; choose one of: {', '.join(STYLE_ENCODERS)}.")
        for name, value in (("label_noise", label_noise), ("style_noise", style_noise)):
            if value < 0:
                raise UserError(f"{name} is a standard deviation and cannot be negative, got {value}.")
        if trailing_blank_columns < 0:
            raise UserError(f"trailing_blank_columns cannot be negative, got {trailing_blank_columns}.")
        if max_new_columns < 1:
            raise UserError(f"max_new_columns must be at least 1, got {max_new_columns}.")
        if not 1 <= stop_min_hits <= stop_window:
            raise UserError(
                f"stop_min_hits must be between 1 and stop_window ({stop_window}), got {stop_min_hits}."
            )
        if int(reduction_factor) < 1:
            raise UserError(f"reduction_factor (latent columns per decoder step) must be at least 1, "
                            f"got {reduction_factor}.")
        for name, value in (("guided_attention_weight", guided_attention_weight),
                            ("stop_loss_weight", stop_loss_weight), ("ctc_weight", ctc_weight),
                            ("duration_loss_weight", duration_loss_weight),
                            ("letter_count_weight", letter_count_weight)):
            if value < 0:
                raise UserError(f"{name} is a loss weight and cannot be negative, got {value}.")
        if not 0.0 <= duration_dropout < 1.0:
            raise UserError(f"duration_dropout is a probability in [0, 1), got {duration_dropout}.")
        if letter_count_weight > 0 and not aligned_letters:
            raise UserError("letter_count_weight counts the style line's letters for the duration head: it needs "
                            "aligned_letters=true.")
        if step_letters not in STEP_LETTERS:
            raise UserError(f"step_letters must be one of {', '.join(STEP_LETTERS)} (how a decoder step's r "
                            f"columns pass their letters on), got {step_letters!r}.")
        if step_letters != "mean" and not aligned_letters:
            raise UserError("step_letters passes each step its planned letters: it needs aligned_letters=true.")
        if width_head and not aligned_letters:
            raise UserError("width_head plans each line's width with a second duration head: it needs "
                            "aligned_letters=true.")
        if guided_attention_sigma <= 0:
            raise UserError(f"guided_attention_sigma must be positive, got {guided_attention_sigma}.")
        if not 0.0 < stop_head_threshold < 1.0:
            raise UserError(f"stop_head_threshold is a probability in (0, 1), got {stop_head_threshold}.")
        self.t5_settings = t5_settings(t5)
        self.style_enc = str(style_enc).lower()
        self.label_noise = float(label_noise)
        self.style_noise = float(style_noise)
        self.trailing_blank_columns = int(trailing_blank_columns)
        self.max_new_columns = int(max_new_columns)
        self.stop_window = int(stop_window)
        self.stop_min_hits = int(stop_min_hits)
        self.reduction_factor = int(reduction_factor)
        self.guided_attention_weight = float(guided_attention_weight)
        self.guided_attention_sigma = float(guided_attention_sigma)
        self.stop_head = bool(stop_head)
        self.stop_loss_weight = float(stop_loss_weight)
        self.stop_head_threshold = float(stop_head_threshold)
        self.ctc_weight = float(ctc_weight)
        self.position_embeddings = bool(position_embeddings)
        self.aligned_letters = bool(aligned_letters)
        self.duration_loss_weight = float(duration_loss_weight)
        self.duration_dropout = float(duration_dropout)
        self.letter_count_weight = float(letter_count_weight)
        self.step_letters = step_letters
        self.width_head = bool(width_head)
        self.attention = attention

        d_model = self.t5_settings["d_model"]
        r = self.reduction_factor
        self.encoder = T5Stack(_stack_config(self.t5_settings, decoder=False, attention=attention))
        # Guided attention reads the decoder's cross-attention weights: only the eager implementation returns them.
        decoder_attention = "eager" if self.guided_attention_weight > 0 else attention
        self.decoder = T5Stack(_stack_config(self.t5_settings, decoder=True, attention=decoder_attention))
        # The decoder reads latent columns, never token ids: drop its embedding table (it would get
        # no gradient and break DDP). The encoder's table starts like T5's shared embedding (std 1).
        self.decoder.embed_tokens = None
        nn.init.normal_(self.encoder.embed_tokens.weight, std=1.0)
        self.style_encoder = build_style_encoder(self.style_enc, LATENT_CHANNELS)
        self.vae_to_t5 = nn.Linear(LATENT_CHANNELS, d_model)  # style columns (and written ones when r = 1)
        if r > 1:  # one decoder step reads and writes r columns at once
            self.columns_to_t5 = nn.Linear(r * LATENT_CHANNELS, d_model)
        self.t5_to_vae = nn.Linear(d_model, r * LATENT_CHANNELS, bias=False)
        self.sos = nn.Embedding(1, d_model)
        if self.stop_head:  # end-of-line logit of each written column
            self.stop_proj = nn.Linear(d_model, r)
        if self.ctc_weight > 0:  # character logits of each written column (training only)
            self.ctc_proj = nn.Linear(d_model, r * VOCAB_SIZE)
        if self.position_embeddings:  # absolute positions of letters and of decoder steps (scaled sinusoids)
            self.text_position_scale = nn.Parameter(torch.ones(()))
            self.column_position_scale = nn.Parameter(torch.ones(()))
            self.register_buffer("position_table", sinusoids(MAX_POSITIONS, d_model), persistent=False)
        if self.aligned_letters:  # each step is told its letter; a duration head plans the letters' widths
            self.letter_proj = nn.Linear(d_model, d_model)
            self.phase_proj = nn.Linear(2, d_model)
            for name, module in self._planner(d_model).items():  # the duration head and its view of the hand
                setattr(self, name, module)
        if self.step_letters == "columns" and r > 1:  # each of a step's r columns its own letter input
            self.step_letters_proj = nn.Linear(r * d_model, d_model)
            with torch.no_grad():  # starts as the mean of the r columns' inputs
                self.step_letters_proj.weight.copy_(torch.eye(d_model).repeat(1, r) / r)
                self.step_letters_proj.bias.zero_()
        if self.width_head:  # a second planner: only each line's width (`line_columns`), fitted by `duration_fit`
            self.width_planner = nn.ModuleDict(self._planner(d_model))

        # The VAE's numbers travel with the weights (state_dict, checkpoints). An all-zero padding
        # latent and a NaN threshold mean "not known yet".
        self.register_buffer("latent_mean", torch.zeros(LATENT_CHANNELS))
        self.register_buffer("latent_std", torch.ones(LATENT_CHANNELS))
        self.register_buffer("padding_latent", torch.zeros(LATENT_CHANNELS))
        self.register_buffer("blank_threshold", torch.tensor(float("nan")))
        self.set_latent_stats(latent_mean, latent_std, padding_latent, stop_threshold)

    def _planner_names(self) -> list[str]:
        names = ["style_columns", "style_summary", "duration_head"]
        return names + (["letter_density", "columns_per_letter_proj"] if self.letter_count_weight > 0 else [])

    def _planner(self, d_model: int) -> dict[str, nn.Module]:
        """New modules of a duration planner: the head, the style-column convolution and summary it reads, and
        with `letter_count_weight` the letter counter. The model's own planner is these as attributes; the
        width head's (`width_planner`) the same names in a ModuleDict. Methods taking `planner` read either."""
        modules = {"style_columns": nn.Conv1d(LATENT_CHANNELS, d_model // 2, kernel_size=5, padding=2),
                   "style_summary": nn.Linear(d_model, d_model),
                   "duration_head": nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, 1))}
        if self.letter_count_weight > 0:  # letters per style column -> the hand's columns per letter
            modules["letter_density"] = nn.Linear(d_model // 2, 1)
            modules["columns_per_letter_proj"] = nn.Linear(1, d_model)
        return modules

    # ------------------------------------------------------------------ latent statistics and stopping

    def set_latent_stats(
        self,
        mean: float | list[float] | Tensor | None = None,
        std: float | list[float] | Tensor | None = None,
        padding_latent: list[float] | Tensor | None = None,
        stop_threshold: float | None = None,
    ) -> None:
        """Adopt a VAE's measured statistics (None leaves a value unchanged)."""
        with torch.no_grad():
            if mean is not None:
                self.latent_mean.copy_(self._channels(mean, "latent_mean"))
            if std is not None:
                std = self._channels(std, "latent_std")
                if bool((std <= 0).any()):
                    raise UserError(f"latent_std must be positive, got {std.tolist()}.")
                self.latent_std.copy_(std)
            if padding_latent is not None:
                pad = self._channels(padding_latent, "padding_latent")
                if float(pad.norm()) == 0.0:
                    raise UserError(
                        "padding_latent cannot be all zeros (its cosine similarity is undefined)."
                    )
                self.padding_latent.copy_(pad)
            if stop_threshold is not None:
                if not -1.0 <= float(stop_threshold) <= 1.0:
                    raise UserError(
                        f"stop_threshold is a cosine similarity in [-1, 1], got {stop_threshold}."
                    )
                self.blank_threshold.fill_(float(stop_threshold))

    @property
    def has_padding_latent(self) -> bool:
        return bool(self.padding_latent.abs().sum() > 0)

    @property
    def stop_threshold(self) -> float | None:
        """Cosine similarity to the padding latent above which a column is blank; None if unknown."""
        value = float(self.blank_threshold)
        return None if math.isnan(value) else value

    def use_vae_stats(self, vae: Any) -> None:
        """Copy latent_mean, latent_std, padding_latent and stop_threshold from a VAE that has them."""
        self.set_latent_stats(
            getattr(vae, "latent_mean", None),
            getattr(vae, "latent_std", None),
            getattr(vae, "padding_latent", None),
            getattr(vae, "stop_threshold", None) if self.stop_threshold is None else None,
        )

    def _channels(self, value: float | list[float] | Tensor, name: str) -> Tensor:
        tensor = torch.as_tensor(value, dtype=torch.float32).detach().cpu().flatten()
        if tensor.numel() == 1:
            tensor = tensor.expand(LATENT_CHANNELS)
        if tensor.numel() != LATENT_CHANNELS:
            raise UserError(f"{name} needs 1 or {LATENT_CHANNELS} values, got {tensor.numel()}.")
        return tensor.to(self.latent_mean.device)

    def stop_rule(self) -> StopRule | None:
        """The stop rule from this model's settings, or None while no padding latent is known."""
        if not self.has_padding_latent or self.stop_threshold is None:
            return None
        return StopRule(self.padding_latent, self.stop_threshold, self.stop_window, self.stop_min_hits)

    def normalise(self, latents: Tensor) -> Tensor:
        return (latents - self.latent_mean) / self.latent_std

    def denormalise(self, latents: Tensor) -> Tensor:
        return latents * self.latent_std + self.latent_mean

    # ------------------------------------------------------------------ training

    def target_mask(self, lengths: Tensor, width: int) -> Tensor:
        """Loss mask (B, width): each target's true columns plus `trailing_blank_columns` blank ones."""
        return torch.arange(width, device=lengths.device)[None, :] < (
            lengths[:, None] + self.trailing_blank_columns
        )

    def pad_target(self, target: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Extend targets with padding-latent columns so every sample has its trailing blanks; + mask."""
        r = self.reduction_factor
        need = int(lengths.max()) + self.trailing_blank_columns
        need = max(need, target.shape[1])
        need = -(-need // r) * r  # whole decoder steps of r columns
        if need > target.shape[1]:
            if not self.has_padding_latent:
                raise UserError("pad_target needs the VAE's padding_latent; call set_latent_stats first.")
            extra = self.padding_latent.to(target).expand(target.shape[0], need - target.shape[1], -1)
            target = torch.cat([target, extra], dim=1)
        return target, self.target_mask(lengths, target.shape[1])

    def forward(
        self,
        text_ids: Tensor,
        text_mask: Tensor,
        style: Tensor,
        style_mask: Tensor,
        target: Tensor,
        target_mask: Tensor,
        letter_index: Tensor | None = None,
        style_letters: Tensor | None = None,
    ) -> ImuruOutput:
        """Teacher-forced prediction of every target column, its masked MSE (normalised space) and the
        enabled auxiliary losses. `target_mask` is `target_mask(lengths, n)`: true columns + trailing blanks.
        `letter_index` (B, n), with `aligned_letters` only: the text token each target column draws
        (`alignment.column_letters`). `style_letters` (B,), with `letter_count_weight` only: the number of
        characters of each style line's text (training only: generation counts them itself)."""
        r = self.reduction_factor
        batch, width, channels = target.shape
        if width % r:
            raise UserError(f"The target has {width} columns, not a multiple of reduction_factor {r}; "
                            "extend it with pad_target.")
        if self.letter_count_weight > 0 and (style_letters is None or style_letters.shape != target.shape[:1]):
            raise UserError("model.letter_count_weight needs the number of characters of each style line: pass "
                            "style_letters (B,), e.g. from LatentEncoder.model_inputs.")
        if self.aligned_letters and (letter_index is None or letter_index.shape != target.shape[:2]):
            raise UserError("model.aligned_letters needs the letter of every target column: pass letter_index "
                            "(B, n) from imuru_pl.models.alignment.batch_letters or column_letters.")
        encoded = self.encode_text(text_ids, text_mask)
        prefix, prefix_mask = self.style_prefix(style, style_mask)
        clean = self.normalise(target)
        shifted = clean.reshape(batch, width // r, r * channels)[:, :-1]
        if self.training and self.label_noise > 0:
            shifted = shifted + torch.randn_like(shifted) * self.label_noise
        written = torch.cat([self._sos(batch), self.embed_columns(shifted)], dim=1)
        if self.aligned_letters:
            written = written + self.letter_inputs(encoded, letter_index, text_mask)
        embeds = torch.cat([prefix, written], dim=1)
        mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, width // r)], dim=1)
        guided = self.training and self.guided_attention_weight > 0
        with self._cross_attention_weights(guided) as cross_attentions:
            hidden = self.decoder(
                inputs_embeds=embeds,
                attention_mask=mask,
                encoder_hidden_states=encoded,
                encoder_attention_mask=text_mask.bool(),
                use_cache=False,
            ).last_hidden_state[:, prefix.shape[1] :]  # (B, steps, d)
        predicted = self.t5_to_vae(hidden).reshape(batch, width, channels)
        weights = target_mask.to(predicted.dtype)
        squared = (predicted - clean).pow(2).mean(-1)
        losses = {"mse": (squared * weights).sum() / weights.sum().clamp_min(1.0)}
        loss = losses["mse"]
        lengths = (target_mask.sum(1) - self.trailing_blank_columns).clamp_min(0)  # true columns
        if guided:
            steps = torch.div(lengths + r - 1, r, rounding_mode="floor")
            losses["guided_attention"] = guided_attention_loss(
                cross_attentions, prefix.shape[1], steps, text_mask, self.guided_attention_sigma
            )
            loss = loss + self.guided_attention_weight * losses["guided_attention"]
        if self.stop_head:
            losses["stop"] = stop_loss(self.stop_proj(hidden).reshape(batch, width), lengths, target_mask)
            loss = loss + self.stop_loss_weight * losses["stop"]
        if self.ctc_weight > 0:
            logits = self.ctc_proj(hidden).reshape(batch, width, VOCAB_SIZE)
            losses["ctc"] = ctc_loss(logits, lengths, text_ids)
            loss = loss + self.ctc_weight * losses["ctc"]
        if self.aligned_letters:
            planned = self.duration_losses(encoded, text_ids, letter_index, lengths, style, style_mask,
                                           style_letters)
            losses.update(planned)
            loss = loss + self.duration_loss_weight * planned["duration"]
            if "letter_count" in planned:
                loss = loss + self.letter_count_weight * planned["letter_count"]
        return ImuruOutput(loss=loss, prediction=self.denormalise(predicted), losses=losses)

    def duration_losses(self, encoded: Tensor, text_ids: Tensor, letter_index: Tensor, lengths: Tensor,
                        style: Tensor, style_mask: Tensor,
                        style_letters: Tensor | None = None,
                        planner: nn.Module | None = None) -> dict[str, Tensor]:
        """The duration head's loss against the columns each letter owns among each target's `lengths` (B,)
        written columns (`letter_index` (B, n)), and, with `letter_count_weight`, the style line's letter
        count's against `style_letters` (B,). Unweighted; `forward` adds them to its loss. `planner`: whose
        head (default the model's own; `width_planner` for the width head)."""
        columns = torch.arange(letter_index.shape[1], device=lengths.device)
        written_columns = columns[None, :] < lengths[:, None]
        own = torch.where(written_columns, letter_index, torch.full_like(letter_index, text_ids.shape[1]))
        durations = letter_durations(own, text_ids.shape[1] + 1)[:, :-1]  # EOS and padding: not counted
        summary, counted = self.writer_summary(style, style_mask, planner)
        losses = {"duration": duration_loss(self.log_durations(encoded, summary, planner), durations, text_ids)}
        if counted is not None:
            wanted = torch.log1p(style_letters.to(counted))
            losses["letter_count"] = (torch.log1p(counted) - wanted).pow(2).mean()
        return losses

    def duration_modules(self, planner: nn.Module | None = None) -> list[nn.Module]:
        """What plans the letters' widths besides the text encoder: the duration head and its view of the hand
        (empty without `aligned_letters`); `planner`: the width head's instead. `duration_fit` trains only
        these."""
        if not self.aligned_letters:
            return []
        return [getattr(planner or self, name) for name in self._planner_names()]

    def add_width_head(self) -> nn.ModuleDict:
        """A width head that starts as a copy of the model's own duration planner (replacing any earlier one):
        `duration_fit.mode=resample` fits it, generation writes with the own plan and `line_columns` gives each
        line's width from this one."""
        if not self.aligned_letters:
            raise UserError("A width head is a second duration head: this model has none (it was trained "
                            "without model.aligned_letters).")
        names = self._planner_names()
        self.width_planner = nn.ModuleDict({name: copy.deepcopy(getattr(self, name)) for name in names})
        self.width_head = True
        return self.width_planner

    @contextmanager
    def _cross_attention_weights(self, enabled: bool):
        """Collect each decoder layer's cross-attention probabilities (B, H, T, S) during one forward.

        Hooks live only inside the `with` block (a model with hooks attached could not be pickled, which
        spawned DDP processes need); the eager attention the decoder is built with returns the weights."""
        weights: list[Tensor] = []
        if not enabled:
            yield weights
            return
        handles = [block.layer[1].EncDecAttention.register_forward_hook(
            lambda module, args, output: weights.append(output[2])) for block in self.decoder.block]
        try:
            yield weights
        finally:
            for handle in handles:
                handle.remove()

    def embed_columns(self, groups: Tensor, start: int = 1) -> Tensor:
        """Written columns as decoder inputs: (B, steps, r * 8) normalised -> (B, steps, d).

        `start` is the decoder position of the first group counted from SOS (position 0): it matters only
        with `position_embeddings`."""
        embeds = (self.columns_to_t5 if self.reduction_factor > 1 else self.vae_to_t5)(groups)
        if self.position_embeddings:
            embeds = embeds + self.column_position_scale * self._positions(start, groups.shape[1]).to(embeds)
        return embeds

    def letter_inputs(self, encoded: Tensor, letter_index: Tensor, text_mask: Tensor) -> Tensor:
        """(B, n) letter of each column -> (B, n / r, d): per decoder step, its letters' encoder states and
        places inside them, added to the step's input: averaged over the step's r columns, or with
        `step_letters="columns"` projected from all r in order (which column draws which letter)."""
        batch, columns = letter_index.shape
        d_model, r = encoded.shape[-1], self.reduction_factor
        letters = encoded.gather(1, letter_index[..., None].expand(-1, -1, d_model))
        eos = text_mask.sum(1) - 1
        phase = letter_phase(letter_index, encoded.shape[1], eos).to(encoded.dtype)
        inputs = self.letter_proj(letters) + self.phase_proj(phase)
        if self.step_letters == "columns" and r > 1:
            return self.step_letters_proj(inputs.reshape(batch, columns // r, r * d_model))
        return inputs.reshape(batch, columns // r, r, d_model).mean(dim=2)

    def writer_summary(self, style: Tensor, style_mask: Tensor,
                       planner: nn.Module | None = None) -> tuple[Tensor, Tensor | None]:
        """(B, d) what the duration head knows of the hand: a convolution over 5 neighbouring style columns
        (40 px, about two letters: how dense the hand writes), averaged and max-pooled over the style line.
        With `letter_count_weight`, also (B,) the letters the style line is predicted to hold (a density
        per column, summed); the summary then carries log(columns per letter), computed from that count
        but not training it (only the count's own loss does). `planner`: as in `duration_losses`."""
        p = planner or self
        mask = style_mask[:, None, :].to(style.dtype)
        columns = self.normalise(style).transpose(1, 2) * mask  # padding read as zeros, as past a line's end
        features = torch.relu(p.style_columns(columns)) * mask
        counted = None
        if self.letter_count_weight > 0:
            density = nn.functional.softplus(p.letter_density(features.transpose(1, 2))).squeeze(-1)
            counted = (density * mask[:, 0]).sum(-1)
        features = nn.functional.dropout(features, self.duration_dropout, self.training)
        mean = features.sum(-1) / mask.sum(-1).clamp_min(1.0)
        summary = p.style_summary(torch.cat([mean, features.amax(-1)], dim=-1))
        if counted is not None:
            per_letter = mask.sum(-1) / counted.detach().clamp_min(0.5)[:, None]  # (B, 1) columns per letter
            summary = summary + p.columns_per_letter_proj(torch.log(per_letter))
        return summary, counted

    def log_durations(self, encoded: Tensor, summary: Tensor, planner: nn.Module | None = None) -> Tensor:
        """(B, L) predicted log(1 + columns) of each text token, from its encoder state and the hand's
        `writer_summary`."""
        inputs = nn.functional.dropout(encoded + summary[:, None], self.duration_dropout, self.training)
        return (planner or self).duration_head(inputs).squeeze(-1)

    def letter_widths(self, encoded: Tensor, text_ids: Tensor, style: Tensor, style_mask: Tensor,
                      style_text: tuple[Tensor, Tensor] | None = None, planner: nn.Module | None = None) -> Tensor:
        """(B, L) long: the planned width in columns of each text token (0 for EOS and padding).

        `style_text` (ids, mask of what the style line says, optional): the plan is scaled by the hand's
        measured width against the width the head plans for the style line's own text (`width_scale`).
        `planner`: as in `duration_losses`."""
        return self._scaled_columns(encoded, text_ids, style, style_mask, style_text, planner).round().long()

    def _scaled_columns(self, encoded: Tensor, text_ids: Tensor, style: Tensor, style_mask: Tensor,
                        style_text: tuple[Tensor, Tensor] | None = None,
                        planner: nn.Module | None = None) -> Tensor:
        """(B, L) float: `letter_widths` before rounding each letter to whole columns."""
        summary, _ = self.writer_summary(style, style_mask, planner)
        widths = self._planned_columns(encoded, text_ids, summary, planner)
        if style_text is not None:
            widths = widths * self.width_scale(summary, style_mask, *style_text, planner=planner)[:, None]
        return widths

    def _planned_columns(self, encoded: Tensor, text_ids: Tensor, summary: Tensor,
                         planner: nn.Module | None = None) -> Tensor:
        """(B, L) float columns the duration head gives each letter (0 for EOS and padding)."""
        widths = torch.expm1(self.log_durations(encoded, summary, planner)).clamp_min(0)
        return torch.where(text_ids >= BYTE_OFFSET, widths, torch.zeros_like(widths))

    def width_scale(self, summary: Tensor, style_mask: Tensor, style_ids: Tensor, style_text_mask: Tensor,
                    planner: nn.Module | None = None) -> Tensor:
        """(B,) the style line's width in columns over the width the duration head plans for its text,
        clamped to [1/2, 2]: how much wider or narrower than predicted this hand writes. 1 where the style
        text is empty. A hand unlike every training hand (an unseen script) is planned from the
        letters it was seen to write, not only from its look."""
        encoded = self.encode_text(style_ids, style_text_mask)
        planned = self._planned_columns(encoded, style_ids, summary, planner).sum(1)
        measured = style_mask.sum(1).to(planned.dtype)
        known = (style_ids >= BYTE_OFFSET).any(1) & (planned > 0)
        scale = (measured / planned.clamp_min(1e-6)).clamp(*WIDTH_SCALE_RANGE)
        return torch.where(known, scale, torch.ones_like(scale))

    def encode_text(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        embeds = self.encoder.embed_tokens(text_ids)
        if self.position_embeddings:
            embeds = embeds + self.text_position_scale * self._positions(0, text_ids.shape[1]).to(embeds)
        return self.encoder(inputs_embeds=embeds, attention_mask=text_mask.bool()).last_hidden_state

    def _positions(self, start: int, length: int) -> Tensor:
        if start + length > MAX_POSITIONS:
            raise UserError(f"position_embeddings cover {MAX_POSITIONS} positions; this input needs "
                            f"{start + length} (a shorter text or fewer columns).")
        return self.position_table[start : start + length]

    def style_prefix(self, style: Tensor, style_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Raw style latents (B, m, 8) + mask -> decoder prefix embeddings (B, p, d) + mask (B, p)."""
        style = self.normalise(style)
        if self.training and self.style_noise > 0:
            style = style + torch.randn_like(style) * self.style_noise
        pooled, mask = self.style_encoder(style, style_mask.bool())
        return self.vae_to_t5(pooled), mask

    def _sos(self, batch: int) -> Tensor:
        sos = self.sos.weight
        if self.position_embeddings:
            sos = sos + self.column_position_scale * self._positions(0, 1).to(sos)
        return sos.unsqueeze(0).expand(batch, 1, -1)

    # ------------------------------------------------------------------ generation

    @torch.inference_mode()
    def generate(
        self,
        text_ids: Tensor,
        text_mask: Tensor,
        style: Tensor,
        style_mask: Tensor,
        max_new_columns: int | None = None,
        stop: StopArg = "model",
        return_stopped: bool = False,
        style_text: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, ...]:
        """Write the texts in the styles, one decoder step (`reduction_factor` columns) at a time with a KV cache.

        Returns raw latent columns (B, n, 8) and lengths (B,): with a stop rule, each sample ends
        after its last non-blank column (columns beyond are the padding latent); without one
        (`stop=None`), every sample has `max_new_columns` columns. With `aligned_letters` the planned
        letter widths decide each length instead (`stop` is not consulted). `return_stopped` adds (B,)
        bool: the samples that stopped by themselves rather than at the column cap. `style_text` (ids, mask:
        what each style line says; optional, `aligned_letters` only) scales each plan to the hand's measured
        width (`width_scale`); an empty text leaves its plan as it is.
        """
        steps, rule = self._generation_setup(style_mask, max_new_columns, stop)
        r = self.reduction_factor
        with self._eval_mode():
            encoded = self.encode_text(text_ids, text_mask)
            prefix, prefix_mask = self.style_prefix(style, style_mask)
            batch = prefix.shape[0]
            plan = self._letter_plan(encoded, text_ids, text_mask, style, style_mask, steps, style_text)
            if plan is not None:  # the planned widths decide where each line ends
                rule, stop = None, None
            decoder_steps = plan.steps if plan is not None else -(-steps // r)
            self_mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, decoder_steps)], dim=1)
            decoder = CachedDecoder(self.decoder, encoded, text_mask.bool(), self_mask)
            hidden = decoder.prefill(torch.cat([prefix, self._sos(batch) + self._step_letters(plan, 0)], dim=1))
            tracker = StopTracker(batch, decoder_steps * r, LATENT_CHANNELS, rule, like=prefix)
            check_every = 1 if prefix.device.type == "cpu" else 16  # a check syncs an accelerator
            done_steps = 0
            while True:
                group = self.t5_to_vae(hidden)  # (B, 1, r * 8) normalised
                self._track(tracker, group, hidden, stop)
                done_steps += 1
                if done_steps >= decoder_steps or (done_steps % check_every == 0 and tracker.all_done()):
                    break
                step_input = self.embed_columns(group, start=done_steps) + self._step_letters(plan, done_steps)
                hidden = decoder.step(step_input)
            columns, lengths, stopped = self._finish(tracker, plan, steps)
            return (columns, lengths, stopped) if return_stopped else (columns, lengths)

    @torch.no_grad()
    def line_columns(self, text_ids: Tensor, text_mask: Tensor, style: Tensor, style_mask: Tensor,
                     style_text: tuple[Tensor, Tensor] | None = None) -> Tensor | None:
        """(B,) long: each line's width in columns as the width head plans it (at least 1), or None without a
        width head. `generate` writes with the model's own plan; the pipeline resamples each written line to
        this width (`pipeline.write_lines_detailed`). Arguments as in `generate`; the letters' widths are
        summed before rounding (a hand of 1.4 columns a letter would otherwise be planned at 1)."""
        if not self.width_head:
            return None
        with self._eval_mode():
            encoded = self.encode_text(text_ids, text_mask)
            widths = self._scaled_columns(encoded, text_ids, style, style_mask, style_text, self.width_planner)
        return widths.sum(1).round().long().clamp_min(1)

    def _letter_plan(self, encoded: Tensor, text_ids: Tensor, text_mask: Tensor, style: Tensor,
                     style_mask: Tensor, columns: int,
                     style_text: tuple[Tensor, Tensor] | None = None) -> LetterPlan | None:
        """With `aligned_letters`: the planned letters of every decoder step (inputs precomputed once) and
        each line's planned length; None otherwise."""
        if not self.aligned_letters:
            if style_text is not None:
                raise UserError("A style text scales the planned letter widths, and this model plans none "
                                "(it was trained without model.aligned_letters): leave the style text out.")
            return None
        widths = self.letter_widths(encoded, text_ids, style, style_mask, style_text)
        planned = widths.sum(1)
        lengths = planned.clamp_max(columns)
        steps = max(1, -(-int(lengths.max()) // self.reduction_factor))
        letters = durations_to_letters(widths, text_mask, steps * self.reduction_factor)
        return LetterPlan(self.letter_inputs(encoded, letters, text_mask), lengths, steps, planned <= columns)

    @staticmethod
    def _step_letters(plan: LetterPlan | None, step: int) -> Tensor | float:
        return 0.0 if plan is None else plan.inputs[:, step : step + 1]

    def _finish(self, tracker: StopTracker, plan: LetterPlan | None, steps: int) -> tuple[Tensor, Tensor, Tensor]:
        """Columns (B, n, 8), lengths and stopped flags of a finished generation."""
        columns, lengths = self._crop(*tracker.result(), steps)
        if plan is None:
            return columns, lengths, tracker.stopped()
        lengths = plan.lengths.clamp_max(columns.shape[1])
        if self.has_padding_latent:  # as with a stop rule: columns past a line's end are the padding latent
            past = torch.arange(columns.shape[1], device=columns.device)[None, :] >= lengths[:, None]
            columns = torch.where(past[..., None], self.padding_latent.to(columns), columns)
        return columns, lengths, plan.stopped

    def _track(self, tracker: StopTracker, group: Tensor, hidden: Tensor, stop: StopArg) -> None:
        """Hand the r columns of one decoder step (and the stop head's verdicts) to the tracker."""
        batch, r = group.shape[0], self.reduction_factor
        columns = self.denormalise(group.reshape(batch, r, LATENT_CHANNELS))
        ended = None
        if self.stop_head and stop == "model":
            ended = torch.sigmoid(self.stop_proj(hidden).reshape(batch, r)) > self.stop_head_threshold
        for k in range(r):
            tracker.update(columns[:, k], None if ended is None else ended[:, k])

    @staticmethod
    def _crop(columns: Tensor, lengths: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """At most `steps` columns: a reduction factor may have written a few more."""
        return columns[:, :steps], lengths.clamp_max(steps)

    @torch.inference_mode()
    def generate_full_recompute(
        self,
        text_ids: Tensor,
        text_mask: Tensor,
        style: Tensor,
        style_mask: Tensor,
        max_new_columns: int | None = None,
        stop: StopArg = "model",
        style_text: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The reference loop: encoder and whole decoder re-run for every column, no cache.

        Same inputs, outputs and stopping as `generate`; kept for tests and benchmarks.
        """
        steps, rule = self._generation_setup(style_mask, max_new_columns, stop)
        r = self.reduction_factor
        with self._eval_mode():
            batch = text_ids.shape[0]
            plan = self._letter_plan(self.encode_text(text_ids, text_mask), text_ids, text_mask, style,
                                     style_mask, steps, style_text)
            if plan is not None:
                rule, stop = None, None
            decoder_steps = plan.steps if plan is not None else -(-steps // r)
            tracker = StopTracker(batch, decoder_steps * r, LATENT_CHANNELS, rule, like=style)
            written = style.new_zeros(batch, 0, r * LATENT_CHANNELS)  # normalised groups of r columns
            for step in range(decoder_steps):
                encoded = self.encode_text(text_ids, text_mask)
                prefix, prefix_mask = self.style_prefix(style, style_mask)
                columns = torch.cat([self._sos(batch), self.embed_columns(written)], dim=1)
                if plan is not None:
                    columns = columns + plan.inputs[:, : step + 1]
                embeds = torch.cat([prefix, columns], dim=1)
                mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, written.shape[1] + 1)], dim=1)
                hidden = self.decoder(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    encoder_hidden_states=encoded,
                    encoder_attention_mask=text_mask.bool(),
                    use_cache=False,
                ).last_hidden_state[:, -1:]
                group = self.t5_to_vae(hidden)
                self._track(tracker, group, hidden, stop)
                if tracker.all_done():
                    break
                written = torch.cat([written, group], dim=1)
            columns, lengths, _ = self._finish(tracker, plan, steps)
            return columns, lengths

    def _generation_setup(
        self, style_mask: Tensor, max_new_columns: int | None, stop: StopArg
    ) -> tuple[int, StopRule | None]:
        steps = self.max_new_columns if max_new_columns is None else int(max_new_columns)
        if steps < 1:
            raise UserError(f"max_new_columns must be at least 1, got {steps}.")
        if not bool(style_mask.bool().any(1).all()):
            raise UserError("Every sample needs a style image at least 8 px wide (one latent column).")
        if stop == "model":
            rule = self.stop_rule()
            if rule is None and not self.stop_head:
                log.warning(
                    "No padding latent / stop threshold set: generating %d columns without stopping.", steps
                )
            return steps, rule
        if stop is not None and not isinstance(stop, StopRule):
            raise UserError(f"stop must be 'model', None or a StopRule, got {stop!r}.")
        return steps, stop

    @contextmanager
    def _eval_mode(self):
        """Generation never uses dropout or noise, even when called from a training loop."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ export / import

    def config_dict(self) -> dict[str, Any]:
        """Everything `from_pretrained` needs to rebuild this model (weights aside)."""
        return {
            "model_type": "imuru",
            "format_version": FORMAT_VERSION,
            "t5": dict(self.t5_settings),
            "style_enc": self.style_enc,
            "label_noise": self.label_noise,
            "style_noise": self.style_noise,
            "trailing_blank_columns": self.trailing_blank_columns,
            "max_new_columns": self.max_new_columns,
            "stop_threshold": self.stop_threshold,
            "stop_window": self.stop_window,
            "stop_min_hits": self.stop_min_hits,
            "latent_mean": self.latent_mean.tolist(),
            "latent_std": self.latent_std.tolist(),
            "padding_latent": self.padding_latent.tolist() if self.has_padding_latent else None,
            "reduction_factor": self.reduction_factor,
            "guided_attention_weight": self.guided_attention_weight,
            "guided_attention_sigma": self.guided_attention_sigma,
            "stop_head": self.stop_head,
            "stop_loss_weight": self.stop_loss_weight,
            "stop_head_threshold": self.stop_head_threshold,
            "ctc_weight": self.ctc_weight,
            "position_embeddings": self.position_embeddings,
            "aligned_letters": self.aligned_letters,
            "duration_loss_weight": self.duration_loss_weight,
            "duration_dropout": self.duration_dropout,
            "letter_count_weight": self.letter_count_weight,
            "step_letters": self.step_letters,
            "width_head": self.width_head,
            "attention": self.attention,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors into `directory` (created if needed)."""
        directory = save_weights_dir(directory, self, self.config_dict())
        log.info("Saved Imuru model to %s", directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str = "cpu") -> Imuru:
        """Rebuild a model saved by `save_pretrained` from a local directory (no network)."""
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not directory.is_dir():
            raise UserError(f"Imuru model directory {str(directory)!r} does not exist.")
        for path in (config_path, weights_path):
            if not path.is_file():
                raise UserError(f"Imuru model directory {str(directory)!r} has no {path.name}.")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"Cannot read {str(config_path)!r}: {err}.") from err
        if not isinstance(config, dict) or config.get("model_type") != "imuru":
            raise UserError(f"{str(config_path)!r} is not an Imuru model config.")
        kwargs = {key: value for key, value in config.items() if key not in ("model_type", "format_version")}
        try:
            model = cls(**kwargs)
        except TypeError as err:
            raise UserError(f"{str(config_path)!r} has settings this version does not know: {err}.") from err
        try:
            state = load_file(str(weights_path))
        except (OSError, SafetensorError) as err:
            raise UserError(f"Cannot read weights {str(weights_path)!r}: {err}.") from err
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"Weights in {str(directory)!r} do not match its config.json.") from err
        return model.to(device).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
