"""scripts/width_response.py: per family, the planned widths' error and how the plan answers a stretched style."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from cli_helpers import REPO

from imuru_pl.models.imuru import Imuru
from imuru_pl.pipeline import ImuruPipeline

sys.path.insert(0, str(REPO / "scripts"))
from width_response import stretched  # noqa: E402

TINY_DATA = ["data.lines_per_writer={train:8,val:4,test:4}", "data.writers_per_font=3"]


def run_script(model_dir, *extra):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "width_response.py"), "--model-dir",
                           str(model_dir), *extra, *TINY_DATA], capture_output=True, text=True, timeout=600)


def test_stretched_resizes_each_image_to_its_own_factor_and_pads_white():
    images = torch.full((2, 3, 64, 48), -1.0)
    images[1, :, :, 24:] = 1.0  # the second image is 24 px wide, white beyond
    out, widths = stretched(images, torch.tensor([48, 24]), 1.5)
    assert widths.tolist() == [72, 36] and out.shape == (2, 3, 64, 72)
    assert torch.all(out[0] == -1.0) and torch.all(out[1, :, :, :36] == -1.0) and torch.all(out[1, :, :, 36:] == 1.0)
    same, same_widths = stretched(images, torch.tensor([48, 24]), 1.0)
    assert same_widths.tolist() == [48, 24] and torch.equal(same[0], images[0])


def test_plans_per_split_and_family_and_refuses_a_model_without_plans(tiny_run, tmp_path):
    trained = ImuruPipeline.from_pretrained(tiny_run / "model")
    assert trained.model.letters is not None, "the tiny run trains with the demo's aligned letters"
    settings = {**trained.model.config_dict(), "letters": None}
    unplanned = Imuru(**{k: v for k, v in settings.items() if k not in ("model_type", "format_version")})
    ImuruPipeline(unplanned, trained.vae).save_pretrained(tmp_path / "unplanned")
    result = run_script(tmp_path / "unplanned")
    assert result.returncode != 0 and "plans no widths" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, "one sentence, no traceback"
    result = run_script(tiny_run / "model", "--stretch", "9")
    assert result.returncode != 0 and "--stretch" in result.stderr

    result = run_script(tiny_run / "model", "--lines", "6", "--stretch", "1,0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(figures) == {"model_dir", "train", "val", "test"}
    for split in ("train", "val", "test"):
        assert sum(family["lines"] for family in figures[split].values()) == 6
        for family in figures[split].values():
            # the unstretched style line plans exactly what it planned (null: the tiny model planned it empty)
            assert family["stretch"]["1"] in (1.0, None)
            assert 0.0 <= family["within_15"] <= 1.0 and family["signed"] >= -1.0
    assert result.stdout.count("\n| test | ") == len(figures["test"])
