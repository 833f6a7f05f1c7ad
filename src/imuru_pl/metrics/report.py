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


# The columns of the Imuru report's tables (and the HWD protocol's), in its order, then the line geometry.
BENCHMARK_COLUMNS = (
    ("fid", "FID", "{:.4g}"),
    ("bfid", "BFID", "{:.4g}"),
    ("kid_x1e3", "KID x1e3", "{:.4g}"),
    ("bkid_x1e3", "BKID x1e3", "{:.4g}"),
    ("hwd", "HWD", "{:.4g}"),
    ("cer_fake", "CER generated", "{:.4f}"),
    ("cer_real", "CER real", "{:.4f}"),
    ("delta_cer", "delta-CER", "{:+.4f}"),
    ("stop_rate", "stop rate", "{:.3f}"),
    ("width_error", "width error", "{:.3f}"),
)


def protocol_match(report: dict[str, Any]) -> dict[str, bool]:
    """Which columns were measured with the published protocol's own models: HWD with the Font² VGG16,
    FID/KID with Inception, CER with TrOCR. Any False makes that column a relative number only."""
    return {"hwd": not str(report.get("backbone", "")).startswith("random"),
            "fid": str(report.get("fid_features", "")).lower().startswith("inception"),
            "cer": str(report.get("ocr", "")).lower().startswith("trocr")}


def benchmark_table(report: dict[str, Any]) -> str:
    """A Markdown table row in the report's columns, with the models that produced each column beneath."""
    head = "| " + " | ".join(label for _, label, _ in BENCHMARK_COLUMNS) + " |"
    rule = "|" + " --- |" * len(BENCHMARK_COLUMNS)
    cells = ["-" if report.get(k) is None else fmt.format(report[k]) for k, _, fmt in BENCHMARK_COLUMNS]
    lines = [head, rule, "| " + " | ".join(cells) + " |", ""]
    for key, label in NOTES:
        if key in report:
            lines.append(f"- {label}: {report[key]}")
    protocol = report.get("protocol")
    if protocol:
        own = [name.upper() for name, same in protocol.items() if same]
        other = [name.upper() for name, same in protocol.items() if not same]
        lines.append(f"- published protocol's models: {', '.join(own) or 'none'}"
                     + (f"; {', '.join(other)} relative only, not comparable with published tables" if other else ""))
    if "written" in report:
        skipped = ", ".join(f"{n} {k}" for k, n in report.get("skipped", {}).items()) or "none skipped"
        lines.append(f"- samples: {report['written']} of {report['samples']} written ({skipped}); "
                     f"{report.get('outside_charset', 0)} texts mapped into the charset")
    return "\n".join(lines)
