"""scripts/legibility_table.py on a run directory laid out as training writes it."""

from __future__ import annotations

import json
import subprocess
import sys

from cli_helpers import REPO
from PIL import Image


def fake_run(root):
    run = root / "my_run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- experiment=legible\n- hydra.run.dir=x\n")
    (run / "learning_curve.csv").write_text(
        "step,minutes,cer_heldout,cer_seen,cer_real_heldout,stop_rate,width_error,width_within_15\n"
        "500,7.5,0.8,0.7,0.0,1.0,0.07,0.9\n900,13.0,0.6,0.5,0.0,1.0,0.05,1.0\n")
    (run / "heldout").mkdir()
    (run / "heldout" / "evaluation.json").write_text(json.dumps({"generated": {
        "cer_fake": 0.55, "cer_real": 0.05, "hwd": 0.07, "stop_rate": 1.0, "width_error": 0.19,
        "ocr_predictions": {"fake": [  # great_vibes: 1 + 2 edits over 4 + 4 characters
            {"writer": "great_vibes-0", "name": "0", "text": "abcd", "read": "abed"},
            {"writer": "great_vibes-0", "name": "1", "text": "wxyz", "read": "wx"}]}}}))
    widths = {"great_vibes-0": [(125, 100), (130, 100)], "yellowtail-1": [(95, 100)]}  # (generated, real)
    for writer, pairs in widths.items():
        for kind in ("generated", "real"):
            (run / "heldout" / kind / writer).mkdir(parents=True)
        for i, (fake, real) in enumerate(pairs):
            Image.new("L", (fake, 64), 255).save(run / "heldout" / "generated" / writer / f"{i}.png")
            Image.new("L", (real, 64), 255).save(run / "heldout" / "real" / writer / f"{i}.png")
    return run


def test_rows_curve_point_and_family_widths(tmp_path):
    run = fake_run(tmp_path)
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "legibility_table.py"), str(run),
                             "--at-step", "500", "--families"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "| my_run | 900 | 13.0 | 0.550 | 0.500 | 0.050 | 0.070 | 1.00 | 0.19 | 0.800 | 1.00 | 0.07 | " \
           "`python run.py experiment=legible` |" in lines
    assert "| my_run | great_vibes | 2 | +0.275 | 0.275 | 0.00 | 0.375 |" in lines
    assert "| my_run | yellowtail | 1 | -0.050 | 0.050 | 1.00 | - |" in lines  # no readings kept


def test_a_run_without_its_recorded_overrides_still_gets_a_row(tmp_path):
    run = fake_run(tmp_path)
    (run / ".hydra" / "overrides.yaml").unlink()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "legibility_table.py"), str(run)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| my_run | 900 | 13.0 | 0.550 | 0.500 | 0.050 | 0.070 | 1.00 | 0.19 | `(not recorded here)` |" \
        in result.stdout.splitlines()


def test_held_out_lines_written_again_get_a_row_without_a_curve(tmp_path):
    run = fake_run(tmp_path)
    (run / "learning_curve.csv").unlink()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "legibility_table.py"), str(run),
                             "--at-step", "500"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| my_run | - | - | 0.550 | - | 0.050 | 0.070 | 1.00 | 0.19 | - | - | - | " \
           "`python run.py experiment=legible` |" in result.stdout.splitlines()
