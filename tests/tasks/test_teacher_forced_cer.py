"""scripts/teacher_forced_cer.py on the tiny trained model: four readings of the same held-out lines."""

from __future__ import annotations

import json
import subprocess
import sys

from cli_helpers import REPO


def test_teacher_forced_cer_reads_real_reconstructed_forced_and_generated_lines(tiny_run):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "teacher_forced_cer.py"), "--model-dir", str(tiny_run / "model"),
         "--lines", "4", "data.lines_per_writer={train:8,val:4,test:4}", "data.writers_per_font=3"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["lines"] == 4 and figures["split"] == "val"
    assert figures["real"] < 0.2, "the OCR reads the real renders"
    assert figures["generated"] > 0.5 and figures["teacher_forced"] > 0.5, "a 12-step model writes no letters"
    assert figures["vae_reconstruction"] > figures["real"], "a 20-step VAE loses letters"
