"""HWD follows the protocol: 32 px columns, per-writer means, and it ranks same-writer sets closest."""

import pytest
import torch
from PIL import Image

from imuru_pl.errors import UserError
from imuru_pl.metrics import Item
from imuru_pl.metrics.evaluator import get_backbone
from imuru_pl.metrics.hwd import column_features, hwd, writer_means
from imuru_pl.metrics.images import hwd_input


@pytest.fixture(scope="module")
def model():
    return get_backbone(None, 0, "cpu").model


def test_preprocessing_pads_narrow_lines_and_keeps_aspect():
    wide = hwd_input(Image.new("RGB", (320, 64), "white"))
    assert wide.shape == (3, 32, 160)
    narrow = Image.new("L", (20, 64), 0)  # a black sliver: padding must be white, on both sides
    x = hwd_input(narrow)
    assert x.shape == (3, 32, 32)
    assert x[:, :, 0].min() == 1.0 and x[:, :, -1].min() == 1.0 and x[:, :, 16].max() == 0.0


def test_one_512d_vector_per_32px_column(model):
    items = [Item("w", Image.new("RGB", (w, 64), "white"), "") for w in (64, 200, 320)]
    shapes = [tuple(f.shape) for f in column_features(model, items)]
    assert shapes == [(1, 512), (3, 512), (5, 512)]  # widths 32, 100, 160 px at height 32


def test_writer_mean_weights_columns_not_lines():
    items = [Item("w", Image.new("RGB", (1, 1)), ""), Item("w", Image.new("RGB", (1, 1)), "")]
    feats = [torch.zeros(1, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)]
    assert torch.allclose(writer_means(items, feats)["w"], torch.full((2,), 0.75, dtype=torch.float64))


def test_hwd_of_a_set_against_itself_is_zero(model, set_a, lines):
    value, per_writer = hwd(model, set_a, set_a)
    assert value == 0.0 and set(per_writer) == set(lines.writers)


def test_same_writer_sets_are_closer_than_different_writers(model, set_a, set_b, lines):
    """Set B holds other texts; relabelling its fonts (a -> b -> c -> a) makes every writer's style wrong."""
    same, per_writer_same = hwd(model, set_a, set_b)
    writers = lines.writers
    rotated = dict(zip(writers, writers[1:] + writers[:1], strict=True))
    swapped, per_writer_swapped = hwd(model, set_a, lines.items(lines.texts_b, label=rotated))
    assert 0 < same < swapped
    assert all(per_writer_same[w] < per_writer_swapped[w] for w in writers)


def test_mismatched_writers_name_the_extra_and_missing_ones(model, set_a):
    real = [i for i in set_a if i.writer != "kalam"] + [Item("zz-stranger", set_a[0].image, "x")]
    with pytest.raises(
        UserError, match=r"only in the generated set: kalam; only in the real set: zz-stranger"
    ):
        hwd(model, set_a, real)
