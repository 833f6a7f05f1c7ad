"""Imuru: a T5 that writes VAE latent columns of a text, in the style of a prefix of style columns.

Everything here lives in latent-column space: inputs and outputs are raw VAE latents (B, n, 8), one
column per 8 px of width. Inside, latents are normalised with `latent_mean` / `latent_std` (the
VAE's measured statistics), and the loss is computed in that normalised space.

    encoder input:  the target text (byte ids)
    decoder input:  [style prefix, SOS, noisy target[:-1]]   (prefix LEFT-padded, see style_encoders)
    decoder output after the prefix -> t5_to_vae -> MSE against the clean target (masked)

The T5 encoder and decoder stacks are used directly: no lm_head and no decoder token embedding
(nothing would train them), so there is no tied-embedding d_model^-0.5 output scaling either.
Beyond the reference: masks everywhere, a KV-cached generator, the VAE's measured stop constants, and a
reduction factor (r columns per decoder step, the reference's `slices_per_query`). Two extensions plug in,
each in its own module and off by default: absolute positions (`positions.py`) and aligned letters with
their duration plan (`letters.py`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers.models.t5.modeling_t5 import T5Stack

from imuru_pl.errors import UserError
from imuru_pl.models.generation import CachedDecoder, StopRule, StopTracker, generate_full_recompute
from imuru_pl.models.letters import AlignedLetters, LetterPlan, letters_settings
from imuru_pl.models.model_format import FORMAT_VERSION, read_model_dir
from imuru_pl.models.positions import PositionEmbeddings, build_positions
from imuru_pl.models.style_encoders import build_style_encoder
from imuru_pl.models.t5_stacks import check_settings, stack_config, t5_settings
from imuru_pl.models.weights_dir import CONFIG_NAME, save_weights_dir

log = logging.getLogger(__name__)

LATENT_CHANNELS = 8  # numbers per latent column (VAE latent height 64 / 8)

StopArg = StopRule | Literal["model"] | None
Channels = float | list[float] | Tensor  # one value for all 8 latent channels, or one each


@dataclass
class ImuruOutput:
    loss: Tensor  # scalar: masked MSE in normalised latent space (+ the weighted duration loss with letters)
    prediction: Tensor  # (B, n, 8) raw VAE latents predicted for each target position (teacher forcing)
    losses: dict[str, Tensor] = field(default_factory=dict)  # each term unweighted: mse, duration


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
        latent_mean: Channels | None = None,
        latent_std: Channels | None = None,
        padding_latent: Channels | None = None,
        reduction_factor: int = 1,
        attention: str = "sdpa",
        positions: bool = False,
        letters: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        check_settings(style_enc, label_noise, style_noise, trailing_blank_columns, max_new_columns,
                        stop_window, stop_min_hits, reduction_factor, attention)
        self.t5_settings = t5_settings(t5)
        self.style_enc = str(style_enc).lower()
        self.label_noise, self.style_noise = float(label_noise), float(style_noise)
        self.trailing_blank_columns = int(trailing_blank_columns)
        self.max_new_columns = int(max_new_columns)
        self.stop_window, self.stop_min_hits = int(stop_window), int(stop_min_hits)
        self.reduction_factor = r = int(reduction_factor)
        self.attention = attention

        d_model = self.t5_settings["d_model"]
        self.encoder = T5Stack(stack_config(self.t5_settings, decoder=False, attention=attention))
        self.decoder = T5Stack(stack_config(self.t5_settings, decoder=True, attention=attention))
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
        # The extensions (off: the reference's decoder inputs).
        self.positions = build_positions(bool(positions), d_model)
        settings = letters_settings(letters)
        self.letters = AlignedLetters(d_model, r, **settings) if settings is not None else None

        # The VAE's numbers travel with the weights (state_dict, checkpoints). An all-zero padding
        # latent and a NaN threshold mean "not known yet".
        self.register_buffer("latent_mean", torch.zeros(LATENT_CHANNELS))
        self.register_buffer("latent_std", torch.ones(LATENT_CHANNELS))
        self.register_buffer("padding_latent", torch.zeros(LATENT_CHANNELS))
        self.register_buffer("blank_threshold", torch.tensor(float("nan")))
        self.set_latent_stats(latent_mean, latent_std, padding_latent, stop_threshold)

    # ------------------------------------------------------------------ latent statistics and stopping

    def set_latent_stats(self, mean: Channels | None = None, std: Channels | None = None,
                         padding_latent: Channels | None = None, stop_threshold: float | None = None) -> None:
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
                    raise UserError("padding_latent cannot be all zeros (its cosine similarity is undefined).")
                self.padding_latent.copy_(pad)
            if stop_threshold is not None:
                if not -1.0 <= float(stop_threshold) <= 1.0:
                    raise UserError(f"stop_threshold is a cosine similarity in [-1, 1], got {stop_threshold}.")
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

    def _channels(self, value: Channels, name: str) -> Tensor:
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

    # ------------------------------------------------------------------ inputs of the two stacks

    def encode_text(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        embeds = self.positions.text(self.encoder.embed_tokens(text_ids))
        return self.encoder(inputs_embeds=embeds, attention_mask=text_mask.bool()).last_hidden_state

    def style_prefix(self, style: Tensor, style_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Raw style latents (B, m, 8) + mask -> decoder prefix embeddings (B, p, d) + mask (B, p)."""
        style = self.normalise(style)
        if self.training and self.style_noise > 0:
            style = style + torch.randn_like(style) * self.style_noise
        pooled, mask = self.style_encoder(style, style_mask.bool())
        return self.vae_to_t5(pooled), mask

    def embed_columns(self, groups: Tensor, start: int = 1) -> Tensor:
        """Written columns as decoder inputs: (B, steps, r * 8) normalised -> (B, steps, d); `start` is the
        decoder position of the first group counted from SOS (position 0)."""
        embeds = (self.columns_to_t5 if self.reduction_factor > 1 else self.vae_to_t5)(groups)
        return self.positions.steps(embeds, start)

    def _sos(self, batch: int) -> Tensor:
        return self.positions.steps(self.sos.weight, 0).unsqueeze(0).expand(batch, 1, -1)

    # ------------------------------------------------------------------ training

    def target_mask(self, lengths: Tensor, width: int) -> Tensor:
        """Loss mask (B, width): each target's true columns plus `trailing_blank_columns` blank ones."""
        return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None] + self.trailing_blank_columns

    def pad_target(self, target: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Extend targets with padding-latent columns so every sample has its trailing blanks; + mask."""
        r = self.reduction_factor
        need = max(int(lengths.max()) + self.trailing_blank_columns, target.shape[1])
        need = -(-need // r) * r  # whole decoder steps of r columns
        if need > target.shape[1]:
            if not self.has_padding_latent:
                raise UserError("pad_target needs the VAE's padding_latent; call set_latent_stats first.")
            extra = self.padding_latent.to(target).expand(target.shape[0], need - target.shape[1], -1)
            target = torch.cat([target, extra], dim=1)
        return target, self.target_mask(lengths, target.shape[1])

    def forward(self, text_ids: Tensor, text_mask: Tensor, style: Tensor, style_mask: Tensor, target: Tensor,
                target_mask: Tensor, letter_index: Tensor | None = None) -> ImuruOutput:
        """Teacher-forced prediction of every target column and its masked MSE (normalised space).
        `target_mask` is `target_mask(lengths, n)`: true columns + trailing blanks. `letter_index` (B, n), with
        letters only: the text token each target column draws (`alignment.batch_letters`)."""
        r = self.reduction_factor
        batch, width, channels = target.shape
        if width % r:
            raise UserError(f"The target has {width} columns, not a multiple of reduction_factor {r}; "
                            "extend it with pad_target.")
        if self.letters is not None and (letter_index is None or letter_index.shape != target.shape[:2]):
            raise UserError("model.letters needs the letter of every target column: pass letter_index "
                            "(B, n) from imuru_pl.models.alignment.batch_letters or column_letters.")
        encoded = self.encode_text(text_ids, text_mask)
        prefix, prefix_mask = self.style_prefix(style, style_mask)
        clean = self.normalise(target)
        shifted = clean.reshape(batch, width // r, r * channels)[:, :-1]
        if self.training and self.label_noise > 0:
            shifted = shifted + torch.randn_like(shifted) * self.label_noise
        written = torch.cat([self._sos(batch), self.embed_columns(shifted)], dim=1)
        if self.letters is not None:
            written = written + self.letters.step_inputs(encoded, letter_index, text_mask)
        hidden = self.decoder(
            inputs_embeds=torch.cat([prefix, written], dim=1),
            attention_mask=torch.cat([prefix_mask, prefix_mask.new_ones(batch, width // r)], dim=1),
            encoder_hidden_states=encoded,
            encoder_attention_mask=text_mask.bool(),
            use_cache=False,
        ).last_hidden_state[:, prefix.shape[1] :]  # (B, steps, d)
        predicted = self.t5_to_vae(hidden).reshape(batch, width, channels)
        weights = target_mask.to(predicted.dtype)
        squared = (predicted - clean).pow(2).mean(-1)
        losses = {"mse": (squared * weights).sum() / weights.sum().clamp_min(1.0)}
        loss = losses["mse"]
        if self.letters is not None:
            lengths = (target_mask.sum(1) - self.trailing_blank_columns).clamp_min(0)  # true columns
            losses["duration"] = self.letters.duration_loss(encoded, text_ids, letter_index, lengths,
                                                            self.normalise(style), style_mask)
            loss = loss + self.letters.duration_loss_weight * losses["duration"]
        return ImuruOutput(loss=loss, prediction=self.denormalise(predicted), losses=losses)

    # ------------------------------------------------------------------ generation

    @torch.inference_mode()
    def generate(self, text_ids: Tensor, text_mask: Tensor, style: Tensor, style_mask: Tensor,
                 max_new_columns: int | None = None, stop: StopArg = "model", return_stopped: bool = False,
                 style_text: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, ...]:
        """Write the texts in the styles, one decoder step (`reduction_factor` columns) at a time with a KV cache.

        Returns raw latent columns (B, n, 8) and lengths (B,): with a stop rule, each sample ends
        after its last non-blank column (columns beyond are the padding latent); without one
        (`stop=None`), every sample has `max_new_columns` columns. With letters the planned
        letter widths decide each length instead (`stop` is not consulted). `return_stopped` adds (B,)
        bool: the samples that stopped by themselves rather than at the column cap. `style_text` (ids, mask:
        what each style line says; letters only) scales each plan to the hand's measured width.
        """
        steps, rule = self._generation_setup(style_mask, max_new_columns, stop)
        with self._eval_mode():
            encoded = self.encode_text(text_ids, text_mask)
            prefix, prefix_mask = self.style_prefix(style, style_mask)
            batch = prefix.shape[0]
            plan = self.letter_plan(encoded, text_ids, text_mask, style, style_mask, steps, style_text)
            decoder_steps = plan.steps if plan is not None else -(-steps // self.reduction_factor)
            self_mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, decoder_steps)], dim=1)
            decoder = CachedDecoder(self.decoder, encoded, text_mask.bool(), self_mask)
            hidden = decoder.prefill(torch.cat([prefix, self._sos(batch) + _step_letters(plan, 0)], dim=1))
            tracker = StopTracker(batch, decoder_steps * self.reduction_factor, LATENT_CHANNELS,
                                  None if plan is not None else rule, like=prefix)
            check_every = 1 if prefix.device.type == "cpu" else 16  # a check syncs an accelerator
            done_steps = 0
            while True:
                group = self.t5_to_vae(hidden)  # (B, 1, r * 8) normalised
                self._track(tracker, group)
                done_steps += 1
                if done_steps >= decoder_steps or (done_steps % check_every == 0 and tracker.all_done()):
                    break
                step_input = self.embed_columns(group, start=done_steps) + _step_letters(plan, done_steps)
                hidden = decoder.step(step_input)
            columns, lengths, stopped = self._finish(tracker, plan, steps)
            return (columns, lengths, stopped) if return_stopped else (columns, lengths)

    def generate_full_recompute(self, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """The reference loop, no cache (`generation.generate_full_recompute`): for tests and benchmarks."""
        return generate_full_recompute(self, *args, **kwargs)

    def letter_plan(self, encoded: Tensor, text_ids: Tensor, text_mask: Tensor, style: Tensor, style_mask: Tensor,
                    columns: int, style_text: tuple[Tensor, Tensor] | None = None) -> LetterPlan | None:
        """With letters: what each decoder step draws and where each line ends; None without."""
        if self.letters is None:
            if style_text is not None:
                raise UserError("A style text scales the planned letter widths, and this model plans none "
                                "(it was trained without model.letters): leave the style text out.")
            return None
        return self.letters.plan(self.encode_text, encoded, text_ids, text_mask, self.normalise(style),
                                 style_mask, columns, style_text)

    def _track(self, tracker: StopTracker, group: Tensor) -> None:
        """Hand the r columns of one decoder step to the tracker."""
        columns = self.denormalise(group.reshape(group.shape[0], self.reduction_factor, LATENT_CHANNELS))
        for k in range(self.reduction_factor):
            tracker.update(columns[:, k])

    def _finish(self, tracker: StopTracker, plan: LetterPlan | None, steps: int) -> tuple[Tensor, Tensor, Tensor]:
        """Columns (B, n, 8), lengths and stopped flags of a finished generation (at most `steps` columns:
        a reduction factor may have written a few more)."""
        columns, lengths = tracker.result()
        columns, lengths = columns[:, :steps], lengths.clamp_max(steps)
        if plan is None:
            return columns, lengths, tracker.stopped()
        return plan.finish(columns, self.padding_latent if self.has_padding_latent else None)

    def _generation_setup(self, style_mask: Tensor, max_new_columns: int | None,
                          stop: StopArg) -> tuple[int, StopRule | None]:
        steps = self.max_new_columns if max_new_columns is None else int(max_new_columns)
        if steps < 1:
            raise UserError(f"max_new_columns must be at least 1, got {steps}.")
        if not bool(style_mask.bool().any(1).all()):
            raise UserError("Every sample needs a style image at least 8 px wide (one latent column).")
        if stop == "model":
            rule = self.stop_rule()
            if rule is None and self.letters is None:
                log.warning("No padding latent / stop threshold set: generating %d columns without stopping.", steps)
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
            "attention": self.attention,
            "positions": isinstance(self.positions, PositionEmbeddings),
            "letters": self.letters.config() if self.letters is not None else None,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors into `directory` (created if needed)."""
        directory = save_weights_dir(directory, self, self.config_dict())
        log.info("Saved Imuru model to %s", directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: torch.device | str = "cpu") -> Imuru:
        """Rebuild a model saved by `save_pretrained` from a local directory (no network)."""
        config, state = read_model_dir(Path(directory))
        config_path = str(Path(directory) / CONFIG_NAME)
        kwargs = {key: value for key, value in config.items() if key not in ("model_type", "format_version")}
        try:
            model = cls(**kwargs)
        except TypeError as err:
            raise UserError(f"{str(config_path)!r} has settings this version does not know: {err}.") from err
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise UserError(f"Weights in {str(directory)!r} do not match its config.json.") from err
        return model.to(device).eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _step_letters(plan: LetterPlan | None, step: int) -> Tensor | float:
    return 0.0 if plan is None else plan.step_input(step)
