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

import json
import logging
import math
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Stack

from imuru_pl.errors import UserError
from imuru_pl.models.generation import CachedDecoder, StopRule, StopTracker
from imuru_pl.models.style_encoders import STYLE_ENCODERS, build_style_encoder
from imuru_pl.models.tokenizer import VOCAB_SIZE

log = logging.getLogger(__name__)

LATENT_CHANNELS = 8  # numbers per latent column (VAE latent height 64 / 8)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
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


@dataclass
class ImuruOutput:
    loss: Tensor  # scalar, masked MSE in normalised latent space
    prediction: Tensor  # (B, n, 8) raw VAE latents predicted for each target position (teacher forcing)


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


def _stack_config(settings: Mapping[str, Any], decoder: bool) -> T5Config:
    config = T5Config(**settings, is_encoder_decoder=False, use_cache=decoder, is_decoder=decoder)
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
    ):
        super().__init__()
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
        self.t5_settings = t5_settings(t5)
        self.style_enc = str(style_enc).lower()
        self.label_noise = float(label_noise)
        self.style_noise = float(style_noise)
        self.trailing_blank_columns = int(trailing_blank_columns)
        self.max_new_columns = int(max_new_columns)
        self.stop_window = int(stop_window)
        self.stop_min_hits = int(stop_min_hits)

        d_model = self.t5_settings["d_model"]
        self.encoder = T5Stack(_stack_config(self.t5_settings, decoder=False))
        self.decoder = T5Stack(_stack_config(self.t5_settings, decoder=True))
        # The decoder reads latent columns, never token ids: drop its embedding table (it would get
        # no gradient and break DDP). The encoder's table starts like T5's shared embedding (std 1).
        self.decoder.embed_tokens = None
        nn.init.normal_(self.encoder.embed_tokens.weight, std=1.0)
        self.style_encoder = build_style_encoder(self.style_enc, LATENT_CHANNELS)
        self.vae_to_t5 = nn.Linear(LATENT_CHANNELS, d_model)
        self.t5_to_vae = nn.Linear(d_model, LATENT_CHANNELS, bias=False)
        self.sos = nn.Embedding(1, d_model)

        # The VAE's numbers travel with the weights (state_dict, checkpoints). An all-zero padding
        # latent and a NaN threshold mean "not known yet".
        self.register_buffer("latent_mean", torch.zeros(LATENT_CHANNELS))
        self.register_buffer("latent_std", torch.ones(LATENT_CHANNELS))
        self.register_buffer("padding_latent", torch.zeros(LATENT_CHANNELS))
        self.register_buffer("blank_threshold", torch.tensor(float("nan")))
        self.set_latent_stats(latent_mean, latent_std, padding_latent, stop_threshold)

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
        need = int(lengths.max()) + self.trailing_blank_columns
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
    ) -> ImuruOutput:
        """Teacher-forced prediction of every target column and its masked MSE (normalised space)."""
        encoded = self.encode_text(text_ids, text_mask)
        prefix, prefix_mask = self.style_prefix(style, style_mask)
        clean = self.normalise(target)
        shifted = clean[:, :-1]
        if self.training and self.label_noise > 0:
            shifted = shifted + torch.randn_like(shifted) * self.label_noise
        batch = target.shape[0]
        embeds = torch.cat([prefix, self._sos(batch), self.vae_to_t5(shifted)], dim=1)
        mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, target.shape[1])], dim=1)
        hidden = self.decoder(
            inputs_embeds=embeds,
            attention_mask=mask,
            encoder_hidden_states=encoded,
            encoder_attention_mask=text_mask.bool(),
            use_cache=False,
        ).last_hidden_state
        predicted = self.t5_to_vae(hidden[:, prefix.shape[1] :])
        weights = target_mask.to(predicted.dtype)
        squared = (predicted - clean).pow(2).mean(-1)
        loss = (squared * weights).sum() / weights.sum().clamp_min(1.0)
        return ImuruOutput(loss=loss, prediction=self.denormalise(predicted))

    def encode_text(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        return self.encoder(input_ids=text_ids, attention_mask=text_mask.bool()).last_hidden_state

    def style_prefix(self, style: Tensor, style_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Raw style latents (B, m, 8) + mask -> decoder prefix embeddings (B, p, d) + mask (B, p)."""
        style = self.normalise(style)
        if self.training and self.style_noise > 0:
            style = style + torch.randn_like(style) * self.style_noise
        pooled, mask = self.style_encoder(style, style_mask.bool())
        return self.vae_to_t5(pooled), mask

    def _sos(self, batch: int) -> Tensor:
        return self.sos.weight.unsqueeze(0).expand(batch, 1, -1)

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
    ) -> tuple[Tensor, Tensor]:
        """Write the texts in the styles, one column per step with a KV cache.

        Returns raw latent columns (B, n, 8) and lengths (B,): with a stop rule, each sample ends
        after its last non-blank column (columns beyond are the padding latent); without one
        (`stop=None`), every sample has `max_new_columns` columns.
        """
        steps, rule = self._generation_setup(style_mask, max_new_columns, stop)
        with self._eval_mode():
            encoded = self.encode_text(text_ids, text_mask)
            prefix, prefix_mask = self.style_prefix(style, style_mask)
            batch = prefix.shape[0]
            self_mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, steps)], dim=1)
            decoder = CachedDecoder(self.decoder, encoded, text_mask.bool(), self_mask)
            hidden = decoder.prefill(torch.cat([prefix, self._sos(batch)], dim=1))
            tracker = StopTracker(batch, steps, LATENT_CHANNELS, rule, like=prefix)
            check_every = 1 if prefix.device.type == "cpu" else 16  # a check syncs an accelerator
            while True:
                column = self.t5_to_vae(hidden)  # (B, 1, 8) normalised
                tracker.update(self.denormalise(column[:, 0]))
                if tracker.steps >= steps or (tracker.steps % check_every == 0 and tracker.all_done()):
                    break
                hidden = decoder.step(self.vae_to_t5(column))
            return tracker.result()

    @torch.inference_mode()
    def generate_full_recompute(
        self,
        text_ids: Tensor,
        text_mask: Tensor,
        style: Tensor,
        style_mask: Tensor,
        max_new_columns: int | None = None,
        stop: StopArg = "model",
    ) -> tuple[Tensor, Tensor]:
        """The reference loop: encoder and whole decoder re-run for every column, no cache.

        Same inputs, outputs and stopping as `generate`; kept for tests and benchmarks.
        """
        steps, rule = self._generation_setup(style_mask, max_new_columns, stop)
        with self._eval_mode():
            tracker = StopTracker(text_ids.shape[0], steps, LATENT_CHANNELS, rule, like=style)
            written = style.new_zeros(text_ids.shape[0], 0, LATENT_CHANNELS)  # normalised
            while True:
                encoded = self.encode_text(text_ids, text_mask)
                prefix, prefix_mask = self.style_prefix(style, style_mask)
                batch = prefix.shape[0]
                embeds = torch.cat([prefix, self._sos(batch), self.vae_to_t5(written)], dim=1)
                mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, written.shape[1] + 1)], dim=1)
                hidden = self.decoder(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    encoder_hidden_states=encoded,
                    encoder_attention_mask=text_mask.bool(),
                    use_cache=False,
                ).last_hidden_state
                column = self.t5_to_vae(hidden[:, -1:])
                tracker.update(self.denormalise(column[:, 0]))
                if tracker.all_done():
                    break
                written = torch.cat([written, column], dim=1)
            return tracker.result()

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
            if rule is None:
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
        }

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write config.json and model.safetensors into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: value.detach().cpu().contiguous() for name, value in self.state_dict().items()}
        # Write beside the final names, then rename: an interrupted save leaves no half-written file.
        weights_tmp = directory / (WEIGHTS_NAME + ".tmp")
        config_tmp = directory / (CONFIG_NAME + ".tmp")
        save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
        config_tmp.write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        weights_tmp.replace(directory / WEIGHTS_NAME)
        config_tmp.replace(directory / CONFIG_NAME)
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
