"""Style images from users: every PIL mode and odd size loads, or fails with one clear sentence."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imuru_pl.data.image import load_line, stack_lines, tensor_to_image
from imuru_pl.errors import UserError

SAMPLES = sorted(p for p in (Path(__file__).resolve().parents[2] / ".." / "shared" / "samples").glob("*")
                 if p.suffix in {".png", ".jpg"})


def handwriting(width: int = 300, height: int = 80) -> Image.Image:
    img = Image.new("L", (width, height), 235)
    draw = ImageDraw.Draw(img)
    for x in range(10, width - 20, 24):
        draw.line([(x, height * 0.7), (x + 12, height * 0.25), (x + 18, height * 0.7)], fill=20, width=4)
    return img


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_pil_mode_loads_as_white_paper_dark_ink(tmp_path, mode):
    source = handwriting()
    if mode in ("I;16", "I", "F"):
        scale, dtype = {"I;16": (257, np.uint16), "I": (1, np.int32), "F": (1, np.float32)}[mode]
        img = Image.fromarray((np.asarray(source, dtype=np.float64) * scale).astype(dtype))
        assert img.mode == mode
    else:
        img = source.convert(mode, dither=Image.Dither.NONE) if mode == "1" else source.convert(mode)
    suffix = ".tiff" if mode in ("I", "F", "CMYK") else ".png"
    path = tmp_path / f"line{suffix}"
    img.save(path)
    line = load_line(path)
    assert line.shape[:2] == (3, 64)
    assert line.shape[2] == round(300 * 64 / 80)
    assert -1.0 <= float(line.min()) and float(line.max()) <= 1.0
    paper = line[:, :4, :].mean()  # top rows are paper
    ink = line.min()
    assert paper > 0.9 and ink < -0.5


def test_gray_channel_and_transparent_background(tmp_path):
    rgba = Image.new("RGBA", (200, 64), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).line([(10, 40), (190, 20)], fill=(0, 0, 0, 255), width=5)
    rgba.save(tmp_path / "t.png")
    line = load_line(tmp_path / "t.png", channels=1)
    assert line.shape == (1, 64, 200)
    assert float(line[0, 0, 0]) == pytest.approx(1.0)  # transparent -> white paper, not black


@pytest.mark.parametrize("path", SAMPLES, ids=[p.name for p in SAMPLES])
def test_project_samples_load(path):
    line = load_line(path)
    assert line.shape[0] == 3 and line.shape[1] == 64 and 8 <= line.shape[2] <= 1024


def test_very_wide_line_is_cut_to_max_width(tmp_path, caplog):
    img = handwriting(20_000, 64)
    img.save(tmp_path / "wide.png")
    line = load_line(tmp_path / "wide.png", max_width=1024)
    assert line.shape == (3, 64, 1024)
    assert "keeping its left 1024 px" in caplog.text


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, img: Image.Image) -> Path:
    img.save(path)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "not found"),
        (lambda d: d, "is a directory"),
        (lambda d: _write(d / "empty.png", b""), r"empty \(0 bytes\)"),
        (lambda d: _write(d / "notes.png", b"not an image"), "not a readable image"),
        (lambda d: _save(d / "sliver.png", Image.new("L", (400, 3), 0)), "at least 8 px"),
        (lambda d: _save(d / "white.png", Image.new("RGB", (400, 64), "white")), "looks blank"),
    ],
    ids=["missing", "directory", "zero-bytes", "not-image", "few-px-high", "all-white"],
)
def test_bad_images_give_one_clear_sentence(tmp_path, make, message):
    with pytest.raises(UserError, match=message) as info:
        load_line(make(tmp_path))
    assert "\n" not in str(info.value)


def test_tensor_round_trip_and_page_stacking():
    line = load_line(handwriting())
    img = tensor_to_image(line)
    assert img.size == (line.shape[2], 64) and img.mode == "RGB"
    page = stack_lines([img, img.crop((0, 0, 100, 64))], gap=8)
    assert page.size == (line.shape[2], 136)
