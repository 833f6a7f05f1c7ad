"""VGG16 convolutional features (13 conv + ReLU, 5 max-pools, up to pool5) in plain torch.

Parameter names match torchvision (`features.N.weight` / `features.N.bias`), so the published Font² VGG16
state dict that HWD uses loads unchanged (its `classifier.*` entries are ignored).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

# torchvision's configuration "D": channel counts, "M" = 2x2 max-pool.
VGG16_LAYERS: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
FEATURE_DIM = 512
RANDOM_NOTE = "relative only, not comparable with published HWD"


class VGG16Features(nn.Module):
    """torchvision's VGG16 `features`: (B, 3, H, W) in [0, 1] -> (B, 512, H/32, W/32)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in VGG16_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(spec), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(spec)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def reset_parameters(self, seed: int) -> None:
        """torchvision's VGG initialisation (Kaiming normal, fan-out; zero bias) from a private generator."""
        generator = torch.Generator().manual_seed(seed)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_out", nonlinearity="relu", generator=generator
                )
                nn.init.zeros_(module.bias)


@dataclass
class Backbone:
    """A ready VGG16 and one line saying which weights it carries (every report repeats it)."""

    model: VGG16Features
    description: str


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the file is not usable weights
        raise UserError(
            f"The HWD backbone file {path} cannot be read as a VGG16 state dict ({err})."
        ) from None
    # Training checkpoints often wrap the weights.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"The HWD backbone file {path} does not hold a state dict of tensors.")
    return data


def _features_only(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Keep `features.*` entries; accept DataParallel's `module.` prefix and a bare `features` Sequential."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if not features and all(k.split(".")[0].isdigit() for k in state):
        features = {f"features.{k}": v for k, v in state.items()}
    expected = VGG16Features().state_dict()
    for key, ref in expected.items():
        if key not in features:
            raise UserError(f"The HWD backbone file {path} is not a torchvision VGG16: it has no {key}.")
        if features[key].shape != ref.shape:
            raise UserError(
                f"The HWD backbone file {path} has {key} of shape {tuple(features[key].shape)}, "
                f"expected {tuple(ref.shape)} (VGG16 without batch norm)."
            )
    extra = sorted(set(features) - set(expected))
    if extra:
        raise UserError(
            f"The HWD backbone file {path} has unexpected layers (e.g. {extra[0]}): not plain VGG16."
        )
    return features


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_backbone(weights: str | Path | None = None, seed: int = 0) -> Backbone:
    """VGG16 features in eval mode, from a state dict (.pth/.pt/.safetensors) or random with `seed`."""
    model = VGG16Features()
    if weights is None:
        model.reset_parameters(seed)
        description = f"random-vgg16-seed{seed} ({RANDOM_NOTE})"
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"The HWD backbone file {path} (metrics.hwd.backbone) does not exist.")
        model.load_state_dict(_features_only(_read_state_dict(path), path))
        description = f"vgg16 from {path.name} (sha256 {_sha256(path)[:12]})"
    log.info("HWD backbone: %s", description)
    return Backbone(model=model.eval().requires_grad_(False), description=description)
