"""End to end through run.py: train a tiny model, export it, write lines for every outside style image."""

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from imuru_pl.pipeline import ImuruPipeline

from cli_helpers import REPO, run_cli

SAMPLES = sorted(p for p in (REPO.parent / "shared" / "samples").glob("*") if p.suffix in {".png", ".jpg"})


def test_training_run_writes_model_logs_and_heldout_lines(tiny_run: Path):
    model_dir = tiny_run / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert (model_dir / "vae" / "line_vae.json").is_file()
    assert (tiny_run / "checkpoints" / "last.ckpt").is_file()
    assert list((tiny_run / "tensorboard").glob("**/events.out.tfevents.*"))
    report = json.loads((tiny_run / "heldout" / "evaluation.json").read_text())
    assert report["generated"]["n_fake"] == 4 and report["generated"]["hwd"] >= 0
    transcriptions = json.loads((tiny_run / "heldout" / "generated" / "transcriptions.json").read_text())
    assert len(transcriptions) == 4
    # Checkpoints hold only what trains: the frozen VAE is stored once, in model/vae.
    state = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["state_dict"] and not any(k.startswith("vae.") for k in state["state_dict"])


def test_training_logs_the_legibility_curve(tiny_run: Path):
    """Every 6 steps and at the end: stop rate and width error of fixed held-out lines (OCR is off here)."""
    with (tiny_run / "learning_curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [6, 12]
    minutes = [float(r["minutes"]) for r in rows]
    assert 0 <= minutes[0] < minutes[1]
    for row in rows:
        assert 0.0 <= float(row["stop_rate"]) <= 1.0 and float(row["width_error"]) >= 0.0
        assert row["cer_heldout"] == "", "no CER without OCR"
    report = json.loads((tiny_run / "heldout" / "evaluation.json").read_text())["generated"]
    assert 0.0 <= report["stop_rate"] <= 1.0 and 0.0 <= report["width_within_15"] <= 1.0


@pytest.mark.parametrize("style", SAMPLES, ids=[p.name for p in SAMPLES])
def test_generate_task_accepts_every_outside_style_image(tiny_run: Path, tmp_path: Path, style: Path):
    out = tmp_path / "line.png"
    result = run_cli("task=generate", f"model_dir={tiny_run / 'model'}", f"style={style}", "text=hello",
                     f"out={out}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    image = Image.open(out)
    assert image.height == 64 and image.width >= 8


def test_long_text_becomes_a_page_and_export_import_is_identical(tiny_run: Path, tmp_path: Path):
    first = ImuruPipeline.from_pretrained(tiny_run / "model")
    copy = first.save_pretrained(tmp_path / "copy")
    second = ImuruPipeline.from_pretrained(copy)
    style = SAMPLES[0]
    a, b = first(style, "same words"), second(style, "same words")
    assert a.size == b.size and a.tobytes() == b.tobytes()
    text = " ".join(["several words of text"] * 6)
    page = first(style, text)
    assert len(first.wrap(text)) > 1 and page.height > 64
