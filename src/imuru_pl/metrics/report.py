"""Turning an evaluation report into a table for people, a JSON file, and scalars for loggers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# (key, label, format) in display order; missing or None values are shown as "-".
ROWS = (
    ("hwd", "HWD", "{:.4g}"),
    ("fid", "FID", "{:.4g}"),
    ("kid_x1e3", "KID x1e3", "{:.4g}"),
    ("bfid", "BFID", "{:.4g}"),
    ("bkid_x1e3", "BKID x1e3", "{:.4g}"),
    ("cer_fake", "CER generated", "{:.4f}"),
    ("cer_real", "CER real", "{:.4f}"),
    ("delta_cer", "delta-CER", "{:+.4f}"),
    ("cer_fake_nocase", "CER generated, any case", "{:.4f}"),
    ("cer_real_nocase", "CER real, any case", "{:.4f}"),
    ("delta_cer_nocase", "delta-CER, any case", "{:+.4f}"),
    ("stop_rate", "lines that stopped by themselves", "{:.3f}"),  # generated lines of a trained model only
    ("width_error", "width error |w - w_real| / w_real", "{:.3f}"),
    ("width_within_15", "lines within 15 % of the real width", "{:.3f}"),
)
NOTES = (("backbone", "HWD backbone"), ("fid_features", "FID/KID features"), ("ocr", "OCR"))


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: metric values, line counts, and which models produced them."""
    lines: list[tuple[str, str]] = []
    for key, label, fmt in ROWS:
        if key in report:
            value = report[key]
            lines.append((label, "-" if value is None else fmt.format(value)))
    if "n_fake" in report:
        lines.append(
            (
                "lines",
                f"{report['n_fake']} generated / {report['n_real']} real, {report['n_writers']} writers",
            )
        )
    for key, label in NOTES:
        if key in report:
            lines.append((label, str(report[key])))
    if "seconds" in report:
        lines.append(("time", f"{report['seconds'].get('total', 0.0):.1f} s"))
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in lines)


def scalars(report: dict[str, Any]) -> dict[str, float]:
    """The finite numeric metrics (for tensorboard / Lightning `log_dict`)."""
    keys = [key for key, _, _ in ROWS]
    return {
        k: float(report[k])
        for k in keys
        if isinstance(report.get(k), (int, float)) and math.isfinite(float(report[k]))
    }


def save_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the report as JSON; written to a temporary name first so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", "utf-8")
    os.replace(tmp, path)
    return path
