"""The T5 side of Imuru: the size presets' defaults, the two stacks' transformers configs, and the checks of
the model's settings (one sentence each)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import T5Config

from imuru_pl.errors import UserError
from imuru_pl.models.style_encoders import STYLE_ENCODERS
from imuru_pl.models.tokenizer import VOCAB_SIZE

ATTENTIONS = ("sdpa", "eager")

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


def stack_config(settings: Mapping[str, Any], decoder: bool, attention: str) -> T5Config:
    """A T5 stack's config; `attention` is transformers' attention implementation (sdpa, T5's default, or
    eager, which trains faster on CPU)."""
    config = T5Config(**settings, is_encoder_decoder=False, use_cache=decoder, is_decoder=decoder)
    config._attn_implementation = attention
    if decoder:
        config.num_layers = settings["num_decoder_layers"]
    return config


def check_settings(style_enc: str, label_noise: float, style_noise: float, trailing_blank_columns: int,
                    max_new_columns: int, stop_window: int, stop_min_hits: int, reduction_factor: int,
                    attention: str) -> None:
    """One sentence for each setting no model could use."""
    checks = [
        (attention in ATTENTIONS, f"attention must be one of {', '.join(ATTENTIONS)} (the T5's attention "
                                  f"implementation), got {attention!r}."),
        (str(style_enc).lower() in STYLE_ENCODERS,
         f"Unknown style_enc {style_enc!r}; choose one of: {', '.join(STYLE_ENCODERS)}."),
        (label_noise >= 0, f"label_noise is a standard deviation and cannot be negative, got {label_noise}."),
        (style_noise >= 0, f"style_noise is a standard deviation and cannot be negative, got {style_noise}."),
        (trailing_blank_columns >= 0, f"trailing_blank_columns cannot be negative, got {trailing_blank_columns}."),
        (max_new_columns >= 1, f"max_new_columns must be at least 1, got {max_new_columns}."),
        (1 <= stop_min_hits <= stop_window,
         f"stop_min_hits must be between 1 and stop_window ({stop_window}), got {stop_min_hits}."),
        (int(reduction_factor) >= 1, "reduction_factor (latent columns per decoder step) must be at least 1, "
                                     f"got {reduction_factor}."),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
