"""One directory per saved module: `config.json` + `model.safetensors`, written so that an interrupted save
leaves no half-written file under either name (each is written beside its name, then renamed)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_weights_dir(directory: str | Path, module: nn.Module, config: dict) -> Path:
    """Write `module`'s state dict and `config` into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in module.state_dict().items()}
    weights_tmp, config_tmp = directory / (WEIGHTS_NAME + ".tmp"), directory / (CONFIG_NAME + ".tmp")
    save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    config_tmp.write_text(json.dumps(config, indent=2) + "\n")
    weights_tmp.replace(directory / WEIGHTS_NAME)
    config_tmp.replace(directory / CONFIG_NAME)
    return directory


def is_weights_dir(directory: str | Path) -> bool:
    """Whether `directory` holds both files of a saved module."""
    directory = Path(directory)
    return (directory / CONFIG_NAME).is_file() and (directory / WEIGHTS_NAME).is_file()
