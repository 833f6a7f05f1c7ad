"""The frozen line autoencoder: images <-> latent columns, plus the constants that tell blank from ink.

A diffusers `AutoencoderKL` with one latent channel and downsampling factor 8 turns a 64 x W line
into a 1 x 8 x W/8 latent; each of its W/8 columns (8 numbers) is one token of the Imuru decoder.
Two constants belong to one trained autoencoder and are stored beside its weights: the latent of
blank paper after a written line (`padding_latent`) and the cosine-similarity threshold above which
a generated column counts as blank (`stop_threshold`), plus per-row latent statistics for the T5
side to normalise with. `measure_stop_constants` measures all of them on real lines.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from imuru_pl.bundled import NAMES as BUNDLED_NAMES, resolve
from imuru_pl.data.batch import COLUMN_PX, LINE_HEIGHT, LineBatch, round_up
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

CONSTANTS_FILE = "line_vae.json"
CONSTANTS_VERSION = 1
LATENT_HEIGHT = LINE_HEIGHT // COLUMN_PX  # 8 numbers per latent column
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights: RGB style image -> gray
WHITE_LEVEL = 0.9  # in [-1, 1]: a pixel at or above this counts as paper when labelling columns
BORDER_COLUMNS = 4  # latent columns near an image edge or a stroke that still feel it (measured: 3-4)
# White px appended to lines before the survey: past each line's end, BORDER_COLUMNS feel the last stroke,
# then at least 4 settled blank columns, then BORDER_COLUMNS that feel the image edge.
SURVEY_MARGIN_PX = COLUMN_PX * (2 * BORDER_COLUMNS + 4)


def _rows(columns: Tensor) -> Tensor:
    """(B, n, 8) columns -> (B, 1, 8, n) autoencoder latent."""
    return columns.transpose(1, 2).unsqueeze(1)


def _columns(latent: Tensor) -> Tensor:
    """(B, 1, 8, n) autoencoder latent -> (B, n, 8) columns."""
    return latent[:, 0].transpose(1, 2)


def convert_channels(images: Tensor, channels: int) -> Tensor:
    """Give (B, C, H, W) images `channels` channels: gray is repeated, RGB is reduced to luminance."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        weights = images.new_tensor(LUMA).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    raise UserError(f"Images with {have} channels cannot be fed to a VAE that expects {channels} channels.")


def check_architecture(autoencoder: AutoencoderKL) -> None:
    """Refuse autoencoders whose latent is not one 8-high column per 8 px of a 64 px line."""
    config = autoencoder.config
    factor = 2 ** (len(config.block_out_channels) - 1)
    if config.latent_channels != 1 or factor != COLUMN_PX:
        raise UserError(
            f"A line VAE needs latent_channels 1 and downsampling factor {COLUMN_PX} (4 blocks); "
            f"this one has latent_channels {config.latent_channels} and factor {factor}."
        )


def _vector(value: Tensor | Iterable[float] | None) -> Tensor | None:
    if value is None:
        return None
    vector = torch.as_tensor(value, dtype=torch.float32).flatten()
    if vector.numel() != LATENT_HEIGHT:
        raise UserError(f"A latent column has {LATENT_HEIGHT} numbers; got a constant with {vector.numel()}.")
    return vector


@dataclass
class StopReport:
    """How the stop constants were measured, and how well they separate blank from inked columns."""

    stop_threshold: float
    blank_accuracy: float  # share of blank columns with similarity above the threshold
    ink_accuracy: float  # share of inked columns at or below it
    balanced_accuracy: float
    inside_blank_accuracy: float  # blank columns inside lines (word gaps, margins)
    trailing_blank_accuracy: float  # white padding columns after lines
    blank_columns: int
    ink_columns: int
    lines: int
    padding_columns: int  # settled white columns after lines averaged into the padding latent
    padding_min_similarity: float  # the least similar of them
    white_image_similarity: float  # cosine between the padding latent and an all-white image's columns
    white_level: float = WHITE_LEVEL
    posterior: str = "mean"
    similarity_quantiles: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


class LineVAE(nn.Module):
    """The project's only interface to the autoencoder: encode lines, decode columns, tell blank columns."""

    def __init__(
        self,
        autoencoder: AutoencoderKL,
        padding_latent: Tensor | None = None,
        stop_threshold: float | None = None,
        latent_mean: Tensor | None = None,
        latent_std: Tensor | None = None,
    ):
        super().__init__()
        check_architecture(autoencoder)
        self.autoencoder = autoencoder
        self.register_buffer("padding_latent", _vector(padding_latent), persistent=False)
        self.register_buffer("latent_mean", _vector(latent_mean), persistent=False)
        self.register_buffer("latent_std", _vector(latent_std), persistent=False)
        self.stop_threshold = None if stop_threshold is None else float(stop_threshold)
        self.measurement: dict[str, Any] = {}

    @property
    def in_channels(self) -> int:
        return int(self.autoencoder.config.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.autoencoder.config.out_channels)

    # -- encoding / decoding ---------------------------------------------------------------------
    def _prepare(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[2] != LINE_HEIGHT or images.shape[3] % COLUMN_PX:
            raise UserError(
                f"The VAE encodes (B, C, {LINE_HEIGHT}, W) images with W a multiple of {COLUMN_PX}; "
                f"got shape {tuple(images.shape)}."
            )
        param = next(self.autoencoder.parameters())
        return convert_channels(images.to(device=param.device, dtype=param.dtype), self.in_channels)

    def posterior(self, images: Tensor):
        """The diffusers posterior (a diagonal Gaussian over the (B, 1, 8, W/8) latent)."""
        return self.autoencoder.encode(self._prepare(images)).latent_dist

    def encode_posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, 64, W) images -> posterior mean and std, each (B, W/8, 8)."""
        dist = self.posterior(images)
        return _columns(dist.mean), _columns(dist.std)

    def encode(self, images: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """(B, C, 64, W) -> (B, W/8, 8) columns: a posterior sample (as Imuru trains) or its mean."""
        dist = self.posterior(images)
        return _columns(dist.sample(generator) if sample else dist.mean)

    def decode(self, columns: Tensor) -> Tensor:
        """(B, n, 8) columns -> (B, 1, 64, 8n) gray images in [-1, 1]."""
        param = next(self.autoencoder.parameters())
        images = self.autoencoder.decode(_rows(columns.to(device=param.device, dtype=param.dtype))).sample
        return convert_channels(images, 1).clamp(-1.0, 1.0)

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction through the posterior mean (what the frozen VAE gives at inference)."""
        return self.decode(self.encode(images, sample=False))

    # -- blank columns -----------------------------------------------------------------------------
    def column_similarity(self, columns: Tensor) -> Tensor:
        """Cosine similarity (B, n) of each column to the padding latent."""
        if self.padding_latent is None:
            raise UserError("This VAE has no padding latent yet: measure its stop constants first.")
        pad = self.padding_latent.to(device=columns.device, dtype=columns.dtype)
        return torch.nn.functional.cosine_similarity(columns, pad.expand_as(columns), dim=-1)

    def is_blank(self, columns: Tensor) -> Tensor:
        """(B, n) True where a column is close enough to the padding latent to count as blank paper."""
        if self.stop_threshold is None:
            raise UserError("This VAE has no stop threshold yet: measure its stop constants first.")
        return self.column_similarity(columns) > self.stop_threshold

    def freeze(self) -> LineVAE:
        """Eval mode and no gradients anywhere: the Imuru stage never updates the VAE."""
        self.eval()
        self.requires_grad_(False)
        return self

    # -- stop constants --------------------------------------------------------------------------
    @torch.no_grad()
    def white_image_latent(self, widths: Iterable[int] = (128, 256, 512)) -> Tensor:
        """Mean posterior column of all-white images, a cross-check for the padding latent.

        Columns within BORDER_COLUMNS of an image edge are skipped where the image is wide enough (they
        see the convolutions' zero padding). The result differs from the blank columns after written
        lines: GroupNorm normalises over the whole image, so a white column's latent depends on how
        much ink the rest of the line holds.
        """
        columns = []
        for width in widths:
            white = torch.ones(1, self.in_channels, LINE_HEIGHT, max(COLUMN_PX, round_up(int(width))))
            mean = self.encode_posterior(white)[0][0].float().cpu()
            middle = len(mean) // 2
            columns.append(
                mean[BORDER_COLUMNS:-BORDER_COLUMNS]
                if len(mean) > 2 * BORDER_COLUMNS
                else mean[middle : middle + 1]
            )
        return torch.cat(columns).mean(dim=0)

    @torch.no_grad()
    def column_survey(
        self, batches: Iterable[LineBatch | Tensor], max_lines: int | None = None
    ) -> dict[str, Tensor]:
        """Encode clean lines and label every latent column of the padded batches.

        Returns `latents` (N, 8) posterior means; `blank` (N,) True where all 8 x 64 px of the column are
        near white (>= WHITE_LEVEL) in the clean image; `trailing` (N,) True for columns wholly in the
        white padding after a line; and `settled` (M, 8): white columns after each line, past the reach
        of its last stroke and of the image border, i.e. blank paper as the VAE sees it after a line.
        """
        latents, blank, trailing, settled, lines = [], [], [], [], 0
        was_training = self.training
        self.eval()
        try:
            for batch in batches:
                images, widths = _clean_images(batch)
                if max_lines is not None:
                    images, widths = images[: max_lines - lines], widths[: max_lines - lines]
                if len(images) == 0:
                    break
                n = images.shape[-1] // COLUMN_PX
                padded = torch.nn.functional.pad(images, (0, SURVEY_MARGIN_PX), value=1.0)
                mean = self.encode_posterior(padded)[0].float().cpu()
                pixel_blank = (images.cpu().float() >= WHITE_LEVEL).all(dim=2).all(dim=1)  # (B, W)
                col_blank = pixel_blank.view(len(images), n, COLUMN_PX).all(dim=-1)  # (B, n)
                real_cols = torch.div(widths.cpu() + COLUMN_PX - 1, COLUMN_PX, rounding_mode="floor")
                index = torch.arange(mean.shape[1])[None, :]
                after = index >= real_cols[:, None]
                calm = (index >= real_cols[:, None] + BORDER_COLUMNS) & (
                    index < mean.shape[1] - BORDER_COLUMNS
                )
                latents.append(mean[:, :n].reshape(-1, LATENT_HEIGHT))
                blank.append((col_blank | after[:, :n]).reshape(-1))
                trailing.append(after[:, :n].reshape(-1))
                settled.append(mean[calm])
                lines += len(images)
                if max_lines is not None and lines >= max_lines:
                    break
        finally:
            self.train(was_training)
        if not latents:
            raise UserError("No lines were given to measure the VAE's stop constants on.")
        return {
            "latents": torch.cat(latents),
            "blank": torch.cat(blank),
            "trailing": torch.cat(trailing),
            "settled": torch.cat(settled),
            "lines": torch.tensor(lines),
        }

    def measure_stop_constants(
        self,
        batches: Iterable[LineBatch | Tensor],
        max_lines: int | None = 512,
        blank_widths: Iterable[int] = (128, 256, 512),
    ) -> StopReport:
        """Measure and set padding_latent, stop_threshold, latent_mean and latent_std on real clean lines.

        padding_latent: mean posterior of the white columns after the lines (past the reach of the last
        stroke); stop_threshold: the cosine similarity to it that best separates blank columns (gaps
        inside lines and trailing padding) from inked ones, by balanced accuracy; latent_mean/std: per
        latent row, over the columns inside the lines. `blank_widths`: all-white images encoded as a
        cross-check (their similarity to the padding latent is reported, not used).
        """
        survey = self.column_survey(batches, max_lines)
        latents, is_blank, trailing, settled = (
            survey["latents"],
            survey["blank"],
            survey["trailing"],
            survey["settled"],
        )
        if is_blank.all() or not is_blank.any():
            raise UserError("Measuring stop constants needs lines with both inked and blank columns.")
        padding = settled.mean(dim=0)
        white = self.white_image_latent(blank_widths)
        inside = latents[~trailing]
        device = next(self.autoencoder.parameters()).device
        self.padding_latent = padding.to(device)
        self.latent_mean = inside.mean(dim=0).to(device)
        self.latent_std = inside.std(dim=0).clamp_min(1e-6).to(device)
        similarity = torch.nn.functional.cosine_similarity(latents, padding.expand_as(latents), dim=-1)
        threshold, _, _ = best_threshold(similarity[is_blank], similarity[~is_blank])
        self.stop_threshold = threshold
        settled_similarity = torch.nn.functional.cosine_similarity(
            settled, padding.expand_as(settled), dim=-1
        )
        report = StopReport(
            stop_threshold=threshold,
            lines=int(survey["lines"]),
            padding_columns=len(settled),
            padding_min_similarity=float(settled_similarity.min()),
            white_image_similarity=float(torch.nn.functional.cosine_similarity(white, padding, dim=0)),
            similarity_quantiles={
                "blank_inside": _quantiles(similarity[is_blank & ~trailing]),
                "blank_trailing": _quantiles(similarity[trailing]),
                "ink": _quantiles(similarity[~is_blank]),
            },
            **_accuracies(similarity > threshold, is_blank, trailing),
        )
        self.measurement = report.to_dict()
        log.info(
            "Stop threshold %.3f: blank columns %.1f%% (inside lines %.1f%%) / inked columns %.1f%% correct "
            "(%d blank, %d inked columns).",
            threshold,
            100 * report.blank_accuracy,
            100 * report.inside_blank_accuracy,
            100 * report.ink_accuracy,
            report.blank_columns,
            report.ink_columns,
        )
        return report

    def stop_accuracy(
        self, batches: Iterable[LineBatch | Tensor], max_lines: int | None = 512
    ) -> dict[str, float]:
        """Blank / inked column accuracy of the current constants on other lines (e.g. held-out writers)."""
        survey = self.column_survey(batches, max_lines)
        predicted = self.is_blank(survey["latents"][None])[0]
        return _accuracies(predicted, survey["blank"], survey["trailing"])

    # -- persistence -------------------------------------------------------------------------------
    def constants(self) -> dict[str, Any]:
        def plain(t: Tensor | None) -> list[float] | None:
            return None if t is None else [float(v) for v in t.detach().cpu()]

        return {
            "format_version": CONSTANTS_VERSION,
            "padding_latent": plain(self.padding_latent),
            "stop_threshold": self.stop_threshold,
            "latent_mean": plain(self.latent_mean),
            "latent_std": plain(self.latent_std),
            "measurement": self.measurement,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a diffusers directory (config.json + safetensors) and the constants in line_vae.json."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.autoencoder.save_pretrained(directory, safe_serialization=True)
        (directory / CONSTANTS_FILE).write_text(json.dumps(self.constants(), indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, require_constants: bool = True) -> LineVAE:
        """Load a saved line VAE from a local directory (or a hub id where a network exists).

        With `require_constants=False` an autoencoder without line_vae.json loads with no constants
        (to measure them afterwards). A bundled name (`line_vae`) names the package's own VAE.
        """
        source = str(resolve(path_or_id)) if str(path_or_id) in BUNDLED_NAMES else str(path_or_id)
        local = Path(source).expanduser()
        if local.exists() or _looks_like_path(source):
            if not local.is_dir():
                raise UserError(f"VAE directory not found: {source}.")
            return cls._from_local(local, require_constants)
        return cls._from_hub(source, require_constants)

    @classmethod
    def _from_local(cls, directory: Path, require_constants: bool) -> LineVAE:
        if not (directory / "config.json").is_file():
            raise UserError(f"{directory} is not a diffusers VAE directory: it has no config.json.")
        constants_path = directory / CONSTANTS_FILE
        if require_constants and not constants_path.is_file():
            raise UserError(f"{directory} has no {CONSTANTS_FILE} (the VAE's measured stop constants).")
        try:
            autoencoder = AutoencoderKL.from_pretrained(
                directory, local_files_only=True, low_cpu_mem_usage=False
            )
        except Exception as err:  # diffusers raises OSError, ValueError, SafetensorError, ... for bad files
            raise UserError(f"Could not load the VAE weights in {directory} ({_reason(err)}).") from err
        constants = _read_constants(constants_path) if constants_path.is_file() else {}
        try:
            return cls._assemble(autoencoder, constants)
        except UserError as err:
            raise UserError(f"{directory} does not hold a usable line VAE: {err}") from err

    @classmethod
    def _from_hub(cls, repo_id: str, require_constants: bool) -> LineVAE:
        offline = _offline()
        try:
            autoencoder = AutoencoderKL.from_pretrained(
                repo_id, local_files_only=offline, low_cpu_mem_usage=False
            )
        except Exception as err:
            where = "in the local cache (offline mode)" if offline else "on the hub"
            raise UserError(
                f"VAE {repo_id!r} is neither a local directory nor loadable {where} ({_reason(err)})."
            ) from err
        constants: dict[str, Any] = {}
        try:
            from huggingface_hub import hf_hub_download

            constants = _read_constants(
                Path(hf_hub_download(repo_id, CONSTANTS_FILE, local_files_only=offline))
            )
        except UserError:
            raise
        except Exception as err:
            if require_constants:
                raise UserError(
                    f"VAE {repo_id!r} has no readable {CONSTANTS_FILE} ({_reason(err)})."
                ) from err
        return cls._assemble(autoencoder, constants)

    @classmethod
    def _assemble(cls, autoencoder: AutoencoderKL, constants: Mapping[str, Any]) -> LineVAE:
        vae = cls(
            autoencoder,
            padding_latent=constants.get("padding_latent"),
            stop_threshold=constants.get("stop_threshold"),
            latent_mean=constants.get("latent_mean"),
            latent_std=constants.get("latent_std"),
        )
        vae.measurement = dict(constants.get("measurement") or {})
        return vae


def best_threshold(blank: Tensor, ink: Tensor) -> tuple[float, float, float]:
    """The similarity threshold maximising balanced accuracy; returns (threshold, blank acc., ink acc.).

    Candidates are midpoints between consecutive observed similarities; a column is called blank
    when its similarity is strictly above the threshold.
    """
    values = torch.cat([blank, ink]).double().sort().values.unique_consecutive()
    ends = torch.stack([values[:1] - 1e-3, values[-1:] + 1e-3])
    candidates = torch.cat([ends[0], (values[1:] + values[:-1]) / 2, ends[1]])
    blank_sorted, ink_sorted = blank.double().sort().values, ink.double().sort().values
    blank_above = 1 - torch.searchsorted(blank_sorted, candidates, right=True) / len(blank_sorted)
    ink_below = torch.searchsorted(ink_sorted, candidates, right=True) / len(ink_sorted)
    best = int(torch.argmax(blank_above + ink_below))
    return float(candidates[best]), float(blank_above[best]), float(ink_below[best])


def _share(mask: Tensor) -> float:
    return float(mask.float().mean()) if mask.numel() else float("nan")


def _accuracies(predicted_blank: Tensor, blank: Tensor, trailing: Tensor) -> dict[str, Any]:
    """Per-class accuracies of a blank-column prediction, with blank split into inside lines / trailing."""
    blank_acc, ink_acc = _share(predicted_blank[blank]), _share(~predicted_blank[~blank])
    return {
        "blank_accuracy": blank_acc,
        "ink_accuracy": ink_acc,
        "balanced_accuracy": (blank_acc + ink_acc) / 2,
        "inside_blank_accuracy": _share(predicted_blank[blank & ~trailing]),
        "trailing_blank_accuracy": _share(predicted_blank[trailing]),
        "blank_columns": int(blank.sum()),
        "ink_columns": int((~blank).sum()),
    }


def _quantiles(values: Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    qs = torch.tensor([0.01, 0.05, 0.5, 0.95, 0.99], dtype=torch.float64)
    found = torch.quantile(values.double(), qs)
    return {f"p{int(q * 100):02d}": round(float(v), 4) for q, v in zip(qs, found, strict=True)}


def _clean_images(batch: LineBatch | Tensor) -> tuple[Tensor, Tensor]:
    """Clean target images and their true widths from a LineBatch (or a plain tensor of full-width lines)."""
    if isinstance(batch, LineBatch):
        return batch.target, batch.target_widths
    return batch, torch.full((batch.shape[0],), batch.shape[-1], dtype=torch.long)


def _read_constants(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as err:
        raise UserError(f"The VAE constants file {path} is not readable JSON ({_reason(err)}).") from err


def _looks_like_path(source: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else (absolute, ./, ~, deeper) is a local path."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or os.sep != "/"
        and os.sep in source
    )


def _offline() -> bool:
    return any(
        os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on")
        for flag in ("HF_HUB_OFFLINE", "DIFFUSERS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _reason(err: BaseException) -> str:
    """First line of an exception message, trimmed: enough to tell what broke without a traceback."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text[:160] + ("..." if len(text) > 160 else "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
