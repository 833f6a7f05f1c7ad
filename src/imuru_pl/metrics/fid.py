"""FID / KID (and BFID / BKID on Otsu-binarised lines) on the protocol's left square crop, via torchmetrics.

Features come from the HWD backbone (global average of the pool5 map, 512-d) by default, since no Inception
weights can be fetched offline; with a user-supplied Inception file the torchmetrics Inception is used.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from imuru_pl.errors import UserError
from imuru_pl.metrics.images import left_square, to_tensor

log = logging.getLogger(__name__)


class SquareFeatures(Protocol):
    """Maps lines to one feature vector each; `description` goes into the report."""

    description: str
    dim: int

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor: ...


class VggSquareFeatures:
    """Pool5 map of the HWD VGG16 on the size x size left square, averaged over space."""

    def __init__(
        self,
        model: nn.Module,
        backbone_description: str,
        size: int = 32,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if size < 32:
            raise UserError(f"metrics.fid.size must be at least 32 (one VGG16 pool5 cell), got {size}.")
        self.model, self.size, self.device, self.batch_size = model, size, device, batch_size
        self.dim = 512
        self.description = f"{backbone_description}: pool5 mean on the {size}x{size} left square"

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack(
                [to_tensor(left_square(im, self.size)) for im in images[start : start + self.batch_size]]
            )
            out.append(self.model(batch.to(self.device)).mean(dim=(2, 3)).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim, dtype=torch.float64)


class InceptionSquareFeatures:
    """torchmetrics' FID Inception (2048-d pool features) from a local weights file; needs torch-fidelity."""

    def __init__(
        self, weights: str | Path, size: int = 32, device: str = "cpu", batch_size: int = 64
    ) -> None:
        path = Path(weights)
        if not path.is_file():
            raise UserError(
                f"The Inception weights file {path} (metrics.fid.inception_weights) does not exist."
            )
        if importlib.util.find_spec("torch_fidelity") is None:
            raise UserError(
                "metrics.fid.inception_weights needs the optional package torch-fidelity "
                "(pip install torch-fidelity); leave it null to use the HWD backbone's features."
            )
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.model = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
            ).to(device)
        except Exception as err:  # noqa: BLE001 - a wrong file fails deep inside torch-fidelity
            raise UserError(f"The Inception weights file {path} cannot be loaded ({err}).") from None
        self.size, self.device, self.batch_size, self.dim = size, device, batch_size, 2048
        self.description = f"inception-v3 from {path.name}: 2048-d on the {size}x{size} left square"

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for start in range(0, len(images), self.batch_size):
            arrays = [
                np.asarray(left_square(im, self.size)) for im in images[start : start + self.batch_size]
            ]
            batch = (
                torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            )  # uint8, as Inception wants
            out.append(self.model(batch.to(self.device)).double().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim, dtype=torch.float64)


class _Precomputed(nn.Module):
    """Lets the torchmetrics metrics take features computed once (and shared by FID and KID)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def fid_kid(
    fake: torch.Tensor, real: torch.Tensor, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0
) -> dict[str, float | None]:
    """FID and KID (mean, std) of two feature sets; None where a set is too small (fewer than 2 lines).

    KID is the unbiased MMD estimate: a set against itself gives a value slightly below 0, not exactly 0.
    The KID subset size shrinks to the smaller set, so tiny validation sets still get a value. KID subsets are
    drawn from a forked, seeded RNG: repeatable, and the caller's (training) RNG is left untouched.
    """
    n = min(len(fake), len(real))
    if n < 2:
        log.warning(
            "FID/KID need at least 2 lines per set (got %d generated, %d real); skipped.",
            len(fake),
            len(real),
        )
        return {"fid": None, "kid": None, "kid_std": None}
    dim = fake.shape[1]
    fid = FrechetInceptionDistance(feature=_Precomputed(dim), normalize=True)
    fid.update(real.double(), real=True)
    fid.update(fake.double(), real=False)
    with warnings.catch_warnings():  # its "features are kept in memory" notice: expected for a few lines
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(
            feature=_Precomputed(dim),
            subsets=kid_subsets,
            subset_size=min(kid_subset_size, n),
            normalize=True,
        )
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": max(float(fid.compute()), 0.0), "kid": float(kid_mean), "kid_std": float(kid_std)}
