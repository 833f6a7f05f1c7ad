"""FID/KID on the left square (HWD backbone features), their binarised variants, and Otsu itself."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imuru_pl.errors import UserError
from imuru_pl.metrics.binarize import binarize, otsu_threshold
from imuru_pl.metrics.evaluator import get_backbone
from imuru_pl.metrics.fid import InceptionSquareFeatures, VggSquareFeatures, fid_kid
from imuru_pl.metrics.images import left_square

TEXTS_1 = tuple(
    f"{w} line"
    for w in (
        "morning",
        "Evening",
        "quiet",
        "Yellow",
        "garden",
        "Winter",
        "coffee",
        "Bright",
        "silver",
        "Dance",
        "ocean",
        "Paper",
    )
)
TEXTS_2 = tuple(
    f"{w} note"
    for w in (
        "happy",
        "Orange",
        "little",
        "Kings",
        "window",
        "Frozen",
        "simple",
        "Travel",
        "pencil",
        "Heavy",
        "jungle",
        "Summer",
    )
)


@pytest.fixture(scope="module")
def features():
    backbone = get_backbone(None, 0, "cpu")
    return VggSquareFeatures(backbone.model, backbone.description, size=32)


def test_otsu_separates_ink_from_coloured_noisy_paper():
    rng = np.random.default_rng(0)
    ink = np.zeros((64, 200), dtype=bool)
    ink[20:44, 30:170:4] = True  # strokes
    paper = np.array([235, 225, 190]) + rng.normal(0, 8, (64, 200, 3))  # yellowish, noisy
    pen = np.array([30, 40, 120]) + rng.normal(0, 8, (64, 200, 3))  # blue ink
    rgb = np.clip(np.where(ink[..., None], pen, paper), 0, 255).astype(np.uint8)
    out = np.asarray(binarize(Image.fromarray(rgb)))
    assert set(np.unique(out)) == {0, 255}
    assert np.array_equal(out[..., 0] == 0, ink)


def test_otsu_threshold_lies_between_two_levels_and_handles_blank_pages():
    two_levels = np.array([[10] * 30 + [200] * 70], dtype=np.uint8)
    assert 10 <= otsu_threshold(two_levels) < 200
    blank = Image.new("RGB", (50, 20), "white")
    assert np.asarray(binarize(blank)).min() == 255


def test_left_square_crops_the_start_and_pads_narrow_lines():
    line = Image.new("RGB", (300, 64), "white")
    line.paste((0, 0, 0), (0, 0, 10, 64))  # ink only at the very left
    square = np.asarray(left_square(line, 32))
    assert square.shape == (32, 32, 3) and square[:, :5].max() == 0 and square[:, 8:].min() == 255
    narrow = np.asarray(left_square(Image.new("L", (16, 64), 0), 32))
    assert narrow[:, 0].min() == 255 and narrow[:, 16].max() == 0  # white padding around the dark sliver


def test_fid_kid_self_is_zero_and_other_font_is_farther(features, lines):
    a = features([lines.render(t, "delius") for t in TEXTS_1])
    same_font = features([lines.render(t, "delius") for t in TEXTS_2])
    other_font = features([lines.render(t, "great_vibes") for t in TEXTS_2])
    itself = fid_kid(a, a, kid_subsets=20)
    same, other = fid_kid(a, same_font, kid_subsets=20), fid_kid(a, other_font, kid_subsets=20)
    assert itself["fid"] == pytest.approx(0.0, abs=1e-9)
    assert other["fid"] > same["fid"] > 0
    # KID is an unbiased estimate: about 0 (slightly negative) for a set against itself
    assert other["kid"] > same["kid"] and abs(itself["kid"]) < other["kid"]


def test_kid_on_tiny_sets_shrinks_its_subsets_and_is_repeatable(features, lines):
    a = features([lines.render(t, "kalam") for t in TEXTS_1[:3]])
    b = features([lines.render(t, "kalam") for t in TEXTS_2[:5]])
    state = torch.random.get_rng_state()
    first, second = fid_kid(a, b, kid_subset_size=1000, seed=3), fid_kid(a, b, kid_subset_size=1000, seed=3)
    assert first == second and all(v is not None and np.isfinite(v) for v in first.values())
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert fid_kid(a[:1], b) == {"fid": None, "kid": None, "kid_std": None}


@pytest.mark.skipif(
    importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed"
)
def test_inception_weights_without_torch_fidelity_name_the_dependency(tmp_path: Path):
    weights = tmp_path / "pt_inception.pth"
    weights.write_bytes(b"0")
    with pytest.raises(UserError, match="torch-fidelity"):
        InceptionSquareFeatures(weights)
    with pytest.raises(UserError, match="does not exist"):
        InceptionSquareFeatures(tmp_path / "missing.pth")
