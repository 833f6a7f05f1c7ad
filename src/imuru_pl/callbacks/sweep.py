"""Hydra callback: a sweep leaves `summary.json` and `summary.md` with every job's final metrics.

Registered in `conf/hydra/default.yaml`. The files are rewritten after each job, so a sweep that is
stopped half-way still says what finished, and a failed job is listed with its error sentence.
Each task returns a dict (train: global step, final losses, held-out evaluation, ...); scalars in
it are flattened to `a/b/c` columns. Only multirun writes anything; single runs are untouched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
# Columns shown first in the markdown table when a job reports them.
PREFERRED = ("global_step", "metrics/val/loss", "metrics/train/loss", "evaluation/generated/hwd",
             "evaluation/generated/cer_fake", "evaluation/generated/fid", "minutes")


def flatten(value: Any, prefix: str = "") -> dict[str, float | int | str | bool | None]:
    """Nested dicts -> {"a/b": scalar}; lists and other objects are left out (they do not fit a table)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        out[prefix] = value
    elif isinstance(value, float):
        out[prefix] = value if math.isfinite(value) else str(value)
    elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        out.update(flatten(value.item(), prefix))
    return out


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(jobs: list[dict[str, Any]]) -> str:
    """One row per job: number, status, the overrides that differ between jobs, then the metrics."""
    keys: list[str] = []
    for job in jobs:
        for key in job.get("metrics", {}):
            if key not in keys and not key.endswith("_dir"):
                keys.append(key)
    keys = [k for k in PREFERRED if k in keys] + [k for k in keys if k not in PREFERRED]
    common = set.intersection(*(set(job["overrides"]) for job in jobs)) if len(jobs) > 1 else set()
    header = ["job", "status", "overrides", *keys]
    lines = []
    if common:
        shared = " ".join(o for o in jobs[0]["overrides"] if o in common)
        lines += [f"Overrides shared by every job: `{shared}`", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for job in jobs:
        status = job["status"] if job["status"] != "failed" else f"failed: {job.get('error', '')}"
        varying = " ".join(o for o in job["overrides"] if o not in common)
        cells = [job["job"], status, varying, *(job.get("metrics", {}).get(k) for k in keys)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Collects each job's return value into `<sweep dir>/summary.json` and a markdown table."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.jobs: list[dict[str, Any]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.jobs = []

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.sweep_dir is None:  # a single run, not a sweep
            return
        hydra_cfg = job_return.hydra_cfg.hydra if job_return.hydra_cfg is not None else None
        job: dict[str, Any] = {
            "job": int(hydra_cfg.job.num) if hydra_cfg is not None else len(self.jobs),
            "overrides": list(job_return.overrides or []),
            "output_dir": str(hydra_cfg.runtime.output_dir) if hydra_cfg is not None else None,
            "status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
        }
        if job_return.status == JobStatus.COMPLETED:
            value = job_return.return_value
            job["metrics"] = flatten(value) if isinstance(value, dict) else {}
        else:
            error = job_return._return_value  # the exception; `return_value` would re-raise it
            job["error"] = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.jobs = [j for j in self.jobs if j["job"] != job["job"]] + [job]
        self.write()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.sweep_dir is not None and self.jobs:
            self.write()
            log.info("Sweep summary of %d jobs: %s", len(self.jobs), self.sweep_dir / SUMMARY_MD)

    def write(self) -> None:
        assert self.sweep_dir is not None
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = sorted(self.jobs, key=lambda j: j["job"])
        _write_atomically(self.sweep_dir / SUMMARY_JSON, json.dumps({"jobs": jobs}, indent=2) + "\n")
        _write_atomically(self.sweep_dir / SUMMARY_MD, markdown_table(jobs))
