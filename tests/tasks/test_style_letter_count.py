"""scripts/style_letter_count.py: per family, how far a model's letter counter is from the style texts."""

from __future__ import annotations

import json
import subprocess
import sys

from cli_helpers import REPO

from imuru_pl.models.imuru import Imuru
from imuru_pl.pipeline import ImuruPipeline

TINY_DATA = ["data.lines_per_writer={train:8,val:4,test:4}", "data.writers_per_font=3"]


def run_script(model_dir, *extra):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "style_letter_count.py"), "--model-dir",
                           str(model_dir), *extra, *TINY_DATA], capture_output=True, text=True, timeout=600)


def test_counts_per_split_and_family_and_refuses_a_model_without_counter(tiny_run, tmp_path):
    result = run_script(tiny_run / "model")
    assert result.returncode != 0 and "no letter counter" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "one sentence, no traceback"

    trained = ImuruPipeline.from_pretrained(tiny_run / "model")
    settings = {**trained.model.config_dict(), "aligned_letters": True, "letter_count_weight": 0.5}
    counting = Imuru(**{k: v for k, v in settings.items() if k not in ("model_type", "format_version")})
    ImuruPipeline(counting, trained.vae).save_pretrained(tmp_path / "counting")
    result = run_script(tmp_path / "counting", "--lines", "6")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"model_dir", "train", "val", "test"}
    for split in ("train", "val", "test"):
        assert sum(family["lines"] for family in figures[split].values()) == 6
        assert all(family["absolute"] >= abs(family["signed"]) for family in figures[split].values())
    assert result.stdout.count("\n| test | ") == len(figures["test"])
