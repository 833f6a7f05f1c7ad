"""Bad input, row by row: each refusal is one logged line and exit status 2 with nothing half-written;
inputs that can be served (every PIL mode, a very wide style, a long text) succeed, with a warning where
something was changed.

Most rows call `run_task` in-process with the config run.py would compose (run.py only adds Hydra around it);
a few go through run.py itself for the exit status and what the terminal shows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image, ImageDraw
from reliability_helpers import TINY, compose_cfg, run_cli

from imuru_pl.tasks import run_task

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"]


def handwriting(width: int = 240, height: int = 48) -> Image.Image:
    """A line of dark strokes on white paper."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for x in range(8, width - 16, 14):
        draw.line([(x, height - 10), (x + 7, 10), (x + 12, height - 12)], fill=(20, 20, 60), width=3)
    return img


def in_mode(img: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    if mode in ("LA", "RGBA"):
        out = img.convert(mode)
        out.putalpha(Image.new("L", img.size, 255))
        return out
    return img.convert(mode)


def save(img: Image.Image, path: Path) -> Path:
    img.save(path, format="TIFF" if img.mode in ("CMYK", "I;16") else "PNG")
    return path


@pytest.fixture()
def generate(tmp_path, trained_run, caplog):
    """Run task=generate in-process; returns (exit status, error lines, warning lines, output path)."""

    def call(style: str | Path, text: str = "hi", model_dir: Path | None = None):
        out = tmp_path / "out" / "written.png"
        cfg = compose_cfg(["task=generate"], tmp_path / "run")
        with open_dict(cfg):
            cfg.model_dir = str(model_dir or trained_run / "model")
            cfg.style, cfg.text, cfg.out = str(style), text, str(out)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            try:
                run_task(cfg)
                status = 0
            except SystemExit as exit_info:
                status = exit_info.code
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        return status, errors, warnings, out

    return call


def assert_refused(result, message: str) -> None:
    status, errors, _, out = result
    assert status == 2, f"expected exit status 2, got {status}"
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0], errors
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir())), (
        "nothing half-written"
    )


@pytest.mark.parametrize("mode", MODES)
def test_style_images_of_every_pil_mode_are_written_with(generate, tmp_path, mode):
    status, errors, _, out = generate(
        save(in_mode(handwriting(), mode), tmp_path / f"style_{mode.replace(';', '')}")
    )
    assert status == 0 and not errors
    assert Image.open(out).height == 64


BAD_STYLES = {
    "missing": (lambda p: p / "nope.png", "Image file not found"),
    "not-an-image": (
        lambda p: (p / "notes.png").write_text("just text") and p / "notes.png",
        "not a readable image",
    ),
    "zero-bytes": (lambda p: (p / "empty.png").write_bytes(b"") or p / "empty.png", "is empty (0 bytes)"),
    "a-directory": (lambda p: p, "is a directory"),
    "few-pixels-high": (lambda p: save(handwriting(300, 5), p / "sliver.png"), "needs at least 8 px"),
    "all-white": (lambda p: save(Image.new("RGB", (300, 64), "white"), p / "white.png"), "looks blank"),
}


@pytest.mark.parametrize("name", list(BAD_STYLES))
def test_a_bad_style_image_is_one_line_and_nothing_is_written(generate, tmp_path, name):
    make, message = BAD_STYLES[name]
    (tmp_path / "in").mkdir()
    assert_refused(generate(make(tmp_path / "in")), message)


def test_a_20000_px_wide_style_succeeds_with_a_warning(generate, tmp_path):
    status, errors, warnings, out = generate(save(handwriting(20_000, 48), tmp_path / "wide.png"))
    assert status == 0 and not errors and out.is_file()
    assert any("keeping its left" in w for w in warnings)


def test_an_empty_text_is_refused(generate, tmp_path):
    assert_refused(generate(save(handwriting(), tmp_path / "s.png"), text="   "), "text")


def test_a_text_longer_than_one_line_becomes_a_page(generate, tmp_path):
    text = "the quick brown fox jumps over the lazy dog " * 3
    status, errors, _, out = generate(save(handwriting(), tmp_path / "s.png"), text=text)
    assert status == 0 and not errors
    assert Image.open(out).height > 2 * 64, "several lines stacked into one page"


def test_characters_the_model_never_saw_are_written_with_a_warning(generate, tmp_path):
    status, _, warnings, out = generate(save(handwriting(), tmp_path / "s.png"), text="naïve 漢字 ok")
    assert status == 0 and out.is_file()
    assert any("ï" in w and "漢" in w for w in warnings)


def foreign_model_dir(root: Path) -> Path:
    (root / "vae").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "bert"}')
    (root / "model.safetensors").write_bytes(b"")
    return root


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p, run: p / "no_such_model", "Model directory not found"),
        (lambda p, run: run / "vae", "is not an exported imuru-pl model"),
        (lambda p, run: foreign_model_dir(p / "bert"), "is not an Imuru model config"),
    ],
    ids=["missing", "a-vae-directory", "another-model"],
)
def test_a_missing_or_foreign_model_dir_is_one_line(generate, tmp_path, trained_run, make, message):
    style = save(handwriting(), tmp_path / "s.png")
    assert_refused(generate(style, model_dir=make(tmp_path, trained_run)), message)


# --- training from a checkpoint ----------------------------------------------------------------------
def evil_checkpoint(path: Path, trained_run: Path) -> Path:
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"] = {"callback": print}  # a pickled function: arbitrary code on load
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda p, run: p / "missing.ckpt", [], "Checkpoint not found"),
        (lambda p, run: save(handwriting(), p / "image.ckpt"), [], "is not a PyTorch checkpoint"),
        (
            lambda p, run: run / "checkpoints" / "last.ckpt",
            ["model.t5.d_model=64"],
            "checkpoint of another model",
        ),
        (evil_checkpoint, [], "pickled Python objects"),
    ],
    ids=["missing", "an-image", "another-model", "pickled-objects"],
)
def test_a_missing_or_foreign_checkpoint_is_one_line(tmp_path, trained_run, caplog, make, extra, message):
    path = (
        make(tmp_path / "evil.ckpt", trained_run) if make is evil_checkpoint else make(tmp_path, trained_run)
    )
    run_dir = tmp_path / "run"
    cfg = compose_cfg([*TINY, f"vae.pretrained={trained_run / 'vae'}", f"ckpt_path={path}", *extra], run_dir)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        run_task(cfg)
    assert exit_info.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]
    assert not (run_dir / "model").exists() and not (run_dir / "checkpoints").exists()


# --- through run.py ---------------------------------------------------------------------------------------
def one_error_line(result) -> str:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1, output[-3000:]
    return errors[0]


def test_an_unknown_config_key_is_one_line_and_a_non_zero_exit(tmp_path):
    result = run_cli("task=generate", "modle_dir=x", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    line = one_error_line(result)
    assert "modle_dir" in line and "+modle_dir" in line  # names the key and how to add one on purpose
    assert not (tmp_path / ".hydra").exists(), "nothing is written for a command that did not compose"


def test_run_py_refuses_a_missing_style_image_in_one_line(tmp_path, trained_run):
    out = tmp_path / "out.png"
    result = run_cli(
        "task=generate",
        f"model_dir={trained_run / 'model'}",
        f"style={tmp_path / 'nope.png'}",
        "text=hello",
        f"out={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2
    assert "Image file not found" in one_error_line(result) and not out.exists()


def test_run_py_refuses_a_missing_checkpoint_before_training_the_vae(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, f"ckpt_path={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "Checkpoint not found" in one_error_line(result)
    assert not (run_dir / "vae").exists() and not (run_dir / "model").exists()


def test_run_py_refuses_a_missing_style_reader_before_training_the_vae(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(*TINY, f"heldout.style_reader={tmp_path / 'no_reader'}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert "heldout.style_reader=" in one_error_line(result) and "not a saved line reader" in one_error_line(result)
    assert not (run_dir / "vae").exists() and not (run_dir / "model").exists()
