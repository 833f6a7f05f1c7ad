"""Line geometry of generated lines: did each line stop by itself, and how far is its width from the real one."""

from __future__ import annotations

import torch

from imuru_pl.data.batch import COLUMN_PX

WIDTH_TOLERANCE = 0.15  # a generated line "has the right width" within 15 % of the real line's


def width_errors(lengths: torch.Tensor, real_widths: torch.Tensor) -> torch.Tensor:
    """Relative width error per line: |8 * length - real width| / real width."""
    generated = lengths.float() * COLUMN_PX
    real = real_widths.float().clamp_min(1.0)
    return (generated - real).abs() / real


def line_geometry(lengths: torch.Tensor, stopped: torch.Tensor, real_widths: torch.Tensor) -> dict[str, float]:
    """stop_rate, width_error (mean relative) and width_within_15 (share within WIDTH_TOLERANCE)."""
    errors = width_errors(lengths, real_widths)
    return {"stop_rate": float(stopped.float().mean()), "width_error": float(errors.mean()),
            "width_within_15": float((errors <= WIDTH_TOLERANCE).float().mean())}
