"""The saved Imuru model directory: reading it, and models saved before the extensions had their own modules.

Format 2 (this version) keeps the extensions under their own keys (`positions`, `letters`) in config.json
and under their own prefixes in the weights. Format 1 models (every switch a top-level key) load as long as
they used none of the switches retired since: guided attention, the stop head, the CTC head, duration dropout
and the letter counter (their code last lived at commit bfe0d8e; docs/legibility.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from imuru_pl.errors import UserError
from imuru_pl.models.weights_dir import CONFIG_NAME, WEIGHTS_NAME

FORMAT_VERSION = 2
RETIRED_AT = "bfe0d8e"
RETIRED = {"guided_attention_weight": 0.0, "stop_head": False, "ctc_weight": 0.0, "duration_dropout": 0.0,
           "letter_count_weight": 0.0}  # format-1 switches and their off values
RETIRED_SETTINGS = ("guided_attention_sigma", "stop_loss_weight", "stop_head_threshold")
# format-1 weight names -> format 2 (prefixes)
RENAMED = {"text_position_scale": "positions.text_scale", "column_position_scale": "positions.column_scale",
           "letter_proj.": "letters.letter_proj.", "phase_proj.": "letters.phase_proj.",
           "step_letters_proj.": "letters.step_letters_proj.", "style_columns.": "letters.planner.style_columns.",
           "style_summary.": "letters.planner.style_summary.", "duration_head.": "letters.planner.duration_head.",
           "width_planner.": "letters.width_planner."}


def read_model_dir(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """config.json and the weights of a saved model directory, in the current format; one sentence if not."""
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
    try:
        state = load_file(str(weights_path))
    except (OSError, SafetensorError) as err:
        raise UserError(f"Cannot read weights {str(weights_path)!r}: {err}.") from err
    return upgrade_saved_model(config, state, str(config_path))


def upgrade_saved_model(config: dict[str, Any], state: dict[str, Tensor],
                        name: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A format-1 config and state dict in format 2; a current one as it is."""
    if config.get("format_version", 1) >= FORMAT_VERSION:
        return config, state
    config = dict(config)
    for key, off in RETIRED.items():
        if key in config and config.pop(key) != off:
            raise UserError(f"{name!r} was trained with {key}, a switch retired from imuru-pl (it measured no "
                            f"gain); load it with imuru-pl at commit {RETIRED_AT}.")
    for key in RETIRED_SETTINGS:
        config.pop(key, None)
    config["positions"] = bool(config.pop("position_embeddings", False))
    aligned = bool(config.pop("aligned_letters", False))
    letters = {"step_letters": config.pop("step_letters", "mean"),
               "duration_loss_weight": config.pop("duration_loss_weight", 1.0),
               "width_head": bool(config.pop("width_head", False))}
    config["letters"] = {"enabled": True, **letters} if aligned else None
    config["format_version"] = FORMAT_VERSION
    renamed = {}
    for key, value in state.items():
        for old, new in RENAMED.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return config, renamed
