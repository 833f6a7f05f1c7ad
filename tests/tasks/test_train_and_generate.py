"""End to end through run.py: train a tiny model, export it, write lines for every outside style image."""

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from imuru_pl.pipeline import ImuruPipeline

from cli_helpers import REPO, TINY_TRAIN, run_cli

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


def test_the_duration_head_is_fitted_again_after_training(tiny_run: Path, tmp_path: Path):
    """duration_fit: the exported model is the weights training ended with plus a fitted width head;
    task=heldout fits a finished run's width head again the same way (tests/tasks/test_heldout.py)."""
    last = tiny_run / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    trained = {key[len("ema_model."):]: value for key, value in state.items() if key.startswith("ema_model.")}
    exported = ImuruPipeline.from_pretrained(tiny_run / "model").model.state_dict()
    assert all(torch.equal(value, exported[key]) for key, value in trained.items()), "the model as trained"
    added = set(exported) - set(trained)
    assert added and all(key.startswith("letters.width_planner.") for key in added)
    assert "duration_fit: validation duration loss" in (tiny_run / "train.log").read_text()
    result = run_cli(*TINY_TRAIN, "model.letters.enabled=false", "duration_fit.steps=3",
                     f"hydra.run.dir={tmp_path / 'plain'}")
    assert result.returncode == 2 and "aligned letters" in result.stdout + result.stderr
    assert not (tmp_path / "plain" / "vae").exists(), "refused before the VAE stage"


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
    style = tmp_path / "style.png"  # drawn here: the test must not depend on the outside samples being present
    drawn = Image.new("RGB", (240, 90), (236, 232, 220))
    ImageDraw.Draw(drawn).line([(10 + 9 * i, 70 - 40 * (i % 2)) for i in range(25)], fill=(30, 30, 60), width=4)
    drawn.save(style)
    a, b = first(style, "same words"), second(style, "same words")
    assert a.size == b.size and a.tobytes() == b.tobytes()
    text = " ".join(["several words of text"] * 6)
    page = first(style, text)
    assert len(first.wrap(text)) > 1 and page.height > 64


def plan_columns_per_letter(pipeline: ImuruPipeline) -> None:
    """Make the duration head plan about 2.3 columns a letter whatever the hand (2 once rounded), without
    the width head the run's duration_fit added (its own widths: tests/models/test_duration_fit.py)."""
    letters = pipeline.model.letters
    letters.drop_width_head()
    with torch.no_grad():
        letters.planner.duration_head[-1].weight.zero_()
        letters.planner.duration_head[-1].bias.fill_(1.2)


def test_a_style_text_fits_the_plan_and_a_bad_one_is_one_sentence(tiny_run: Path, tmp_path: Path):
    style = tmp_path / "style.png"
    drawn = Image.new("L", (320, 64), 240)
    ImageDraw.Draw(drawn).line([(8 + 10 * i, 50 - 30 * (i % 2)) for i in range(30)], fill=20, width=3)
    drawn.save(style)
    pipeline = ImuruPipeline.from_pretrained(tiny_run / "model")
    plan_columns_per_letter(pipeline)  # a dozen steps plan next to nothing
    loaded = pipeline.load_styles([style])
    # one letter for a 40-column line: the hand is measured far wider than planned (scale capped at 2)
    wide, plain = (pipeline.generate_lines(loaded, ["hell"], style_text=t)[0] for t in ("a", None))
    assert plain.shape[-1] == 8 * 4 * 2 and wide.shape[-1] == 8 * 4 * 5, "2.3 columns a letter, then 4.6"
    out = tmp_path / "line.png"
    common = [f"model_dir={tiny_run / 'model'}", f"style={style}", "text=hello", f"out={out}",
              f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli("task=generate", *common, "style_text='what the style says'")
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).height == 64
    out.unlink()
    result = run_cli("task=generate", *common, "style_text=' '")
    assert result.returncode != 0 and "style text is empty" in result.stdout + result.stderr and not out.exists()


def test_export_weights_last_exports_the_average_training_ended_with(tiny_run: Path, tmp_path: Path):
    run_dir = tmp_path / "last"
    common = [*TINY_TRAIN, f"vae.pretrained={tiny_run / 'model' / 'vae'}", "optim.ema_decay=0.5", "heldout.num_lines=0"]
    result = run_cli(*common, "export_weights=last", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    exported = load_file(run_dir / "model" / "model.safetensors")
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(torch.equal(exported[k[len("ema_model."):]], v) for k, v in state.items()
                         if k.startswith("ema_model.")), "the export is the last checkpoint's moving average"
    result = run_cli(*common, "export_weights=first", f"hydra.run.dir={tmp_path / 'bad'}")
    assert result.returncode != 0 and "export_weights must be best or last" in result.stdout + result.stderr
    assert not (tmp_path / "bad" / "model").exists()


def reader_of_one_letter(directory: Path, letter: str = "a") -> Path:
    """A line reader that reads every line as `letter` (its head gives that byte id on every frame)."""
    from imuru_pl.models.reader import LineReader
    from imuru_pl.models.tokenizer import BYTE_OFFSET

    reader = LineReader(channels=[8, 16, 16, 16], hidden=32)
    with torch.no_grad():
        reader.head.weight.zero_()
        reader.head.bias.fill_(-10.0)
        reader.head.bias[BYTE_OFFSET + ord(letter)] = 10.0
    return reader.save_pretrained(directory)


def test_a_style_reader_gives_generation_the_style_text_it_reads(tiny_run: Path, tmp_path: Path):
    pipeline = ImuruPipeline.from_pretrained(tiny_run / "model")
    plan_columns_per_letter(pipeline)  # as above: a style text of one letter doubles the plan
    model_dir = pipeline.save_pretrained(tmp_path / "model")
    reader = reader_of_one_letter(tmp_path / "reader")
    style = tmp_path / "style.png"
    drawn = Image.new("RGB", (320, 64), (240, 238, 230))
    ImageDraw.Draw(drawn).line([(8 + 10 * i, 50 - 30 * (i % 2)) for i in range(30)], fill=(20, 20, 40), width=3)
    drawn.save(style)

    def generate(name: str, *extra: str) -> subprocess.CompletedProcess:
        return run_cli("task=generate", f"model_dir={model_dir}", f"style={style}", "text=hell",
                       f"out={tmp_path / name}", f"hydra.run.dir={tmp_path / 'run'}", *extra)

    for name, extra in (("read.png", f"style_reader={reader}"), ("told.png", "style_text=a"), ("plain.png", "")):
        result = generate(name, *([extra] if extra else []))
        assert result.returncode == 0, result.stderr[-2000:]
    read, told, plain = (Image.open(tmp_path / n) for n in ("read.png", "told.png", "plain.png"))
    assert read.tobytes() == told.tobytes() and read.width == 8 * 4 * 5 and plain.width == 8 * 4 * 2
    again = generate("again.png", f"style_reader={reader}")
    assert "reads the style image as 'a'" in again.stdout + again.stderr
    both = generate("both.png", f"style_reader={reader}", "style_text=a")
    missing = generate("missing.png", f"style_reader={tmp_path / 'nothing'}")
    assert both.returncode != 0 and "choose one" in both.stdout + both.stderr
    assert missing.returncode != 0 and "style_reader=" in missing.stdout + missing.stderr
    assert not (tmp_path / "both.png").exists() and not (tmp_path / "missing.png").exists()

    from imuru_pl.models.reader import LineReader  # a model that carries the reader reads with it by itself

    pipeline.reader = LineReader.from_pretrained(reader)
    with_reader = pipeline.save_pretrained(tmp_path / "with_reader")
    assert (with_reader / "reader" / "model.safetensors").is_file()
    assert ImuruPipeline.from_pretrained(with_reader).reader is not None
    for name, extra in (("own.png", ""), ("off.png", "style_reader=false")):
        result = run_cli("task=generate", f"model_dir={with_reader}", f"style={style}", "text=hell",
                         f"out={tmp_path / name}", f"hydra.run.dir={tmp_path / 'run'}", *([extra] if extra else []))
        assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(tmp_path / "own.png").tobytes() == read.tobytes(), "the model's own reader fits the width"
    assert Image.open(tmp_path / "off.png").tobytes() == plain.tobytes(), "style_reader=false: no reader"
