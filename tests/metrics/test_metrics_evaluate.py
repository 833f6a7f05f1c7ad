"""The library API and `python run.py task=evaluate`, end to end on tiny folders."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imuru_pl.errors import UserError
from imuru_pl.metrics import evaluate_sets, format_table, scalars, write_folder
from imuru_pl.metrics.settings import settings_from_config

ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = (
    "hwd",
    "fid",
    "kid_x1e3",
    "bfid",
    "bkid_x1e3",
    "cer_fake",
    "cer_real",
    "delta_cer",
    "cer_fake_nocase",
    "cer_real_nocase",
    "delta_cer_nocase",
)


def test_evaluate_sets_reports_every_metric_and_its_provenance(set_a, set_b, lines):
    fake = [
        i for i in set_a if i.writer in lines.ocr_fonts
    ]  # great_vibes has ~1% OCR errors: keep CER 0 here
    # "real" lines misread on purpose: each text is written in another line's image
    real = [type(i)(i.writer, j.image, i.text) for i, j in zip(set_b, set_b[1:] + set_b[:1], strict=True)]
    real = [i for i in real if i.writer in {f.writer for f in fake}]
    report = evaluate_sets(fake, real, {"metrics": {"fid": {"kid_subsets": 10}}})
    assert all(isinstance(report[k], float) for k in METRIC_KEYS)
    assert report["cer_fake"] <= 0.05 < report["cer_real"]
    assert report["delta_cer"] == pytest.approx(report["cer_fake"] - report["cer_real"])
    assert "relative only" in report["backbone"] and "rapidocr" in report["ocr"]
    assert report["n_fake"] == len(fake) and set(report["hwd_per_writer"]) == {i.writer for i in fake}
    assert len(report["ocr_predictions"]["real"]) == len(real)
    assert set(scalars(report)) == set(METRIC_KEYS)
    assert "delta-CER" in format_table(report)


def test_disabled_parts_are_skipped_and_bad_settings_are_user_errors(set_a):
    report = evaluate_sets(set_a, set_a, {"fid": {"enabled": False}, "ocr": {"enabled": False}})
    assert report["hwd"] == 0.0 and "fid" not in report and "cer_fake" not in report
    with pytest.raises(UserError, match="metrics.ocr.backend='easyocr'"):
        settings_from_config({"ocr": {"backend": "easyocr"}})
    with pytest.raises(UserError, match="metrics.fid.kid_subset_size must be at least 1"):
        settings_from_config({"fid": {"kid_subset_size": 0}})
    with pytest.raises(UserError, match="Nothing to evaluate"):
        evaluate_sets([], set_a)


def _run(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_evaluate_task_end_to_end_with_relative_paths(tmp_path, lines):
    writers = ("delius", "kalam")
    write_folder(tmp_path / "gen", lines.items(lines.texts_a[:2], writers))
    write_folder(tmp_path / "real", lines.items(lines.texts_b[:2], writers))
    out = _run(
        [
            "task=evaluate",
            "fake=gen",
            "real=real",
            "report=reports/eval.json",
            f"hydra.run.dir={tmp_path / 'run'}",
            "metrics.fid.kid_subsets=5",
        ],
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "reports" / "eval.json").read_text())
    assert report["n_writers"] == 2 and report["cer_fake"] <= 0.05 and report["hwd"] > 0
    assert report["fake_dir"] == str(tmp_path / "gen")
    assert "HWD backbone" in out.stdout + out.stderr and "delta-CER" in out.stdout + out.stderr

    default = _run(
        [
            "task=evaluate",
            "fake=gen",
            "real=real",
            f"hydra.run.dir={tmp_path / 'run1'}",
            "metrics.ocr.enabled=false",
            "metrics.fid.enabled=false",
        ],
        cwd=tmp_path,
    )
    assert default.returncode == 0, default.stderr[-2000:]
    assert json.loads((tmp_path / "run1" / "evaluation.json").read_text())["hwd"] == pytest.approx(
        report["hwd"]
    )

    missing = _run(["task=evaluate", "fake=gen", f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path)
    assert missing.returncode == 2 and "task=evaluate needs real=<folder>" in missing.stdout + missing.stderr
