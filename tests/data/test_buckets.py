"""Batches of similar widths (`data.bucket_batches`): every line once per epoch, less padding, any data."""

from __future__ import annotations

import numpy as np
import pytest
from test_real_lines import make_folder

from imuru_pl.data.buckets import BucketBatchSampler, check_bucket_batches
from imuru_pl.data.curriculum import CurriculumBatchSampler
from imuru_pl.data.datamodule import LineDataModule
from imuru_pl.data.folder import FolderDataModule
from imuru_pl.errors import UserError


def padded_cost(batches, sizes) -> int:
    """What the batches cost when each is padded to its widest style and its widest target."""
    return sum(len(batch) * int(sizes[batch].max(axis=0).sum()) for batch in batches)


def test_every_line_comes_once_per_epoch_in_batches_of_similar_size():
    sizes = np.random.default_rng(0).integers(50, 1000, size=(203, 2))
    sampler = BucketBatchSampler(sizes, batch_size=8, bucket_batches=5, seed=3)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert len(epoch) == len(sampler) == 26
        assert sorted(i for batch in epoch for i in batch) == list(range(203))
        assert sorted(len(batch) for batch in epoch)[1:] == [8] * 25  # one short batch at the end
    assert first != second, "a new order every epoch"
    assert list(BucketBatchSampler(sizes, 8, 5, seed=3)) == first, "the order is fixed by (seed, epoch)"
    plain = BucketBatchSampler(sizes, 8, 1, seed=3)
    assert padded_cost(first, sizes) < 0.85 * padded_cost(list(plain), sizes)
    group_starts = {i for batch in first[:5] for i in batch}
    assert group_starts == set(np.random.default_rng((3, 0, 1)).permutation(203)[:40].tolist()), \
        "a group is 5 batches of the epoch's permutation, only reordered by size"


def test_the_curriculum_draws_bucketed_batches_from_its_pool():
    lengths = list(range(100))  # text lengths: item i is the i-th shortest
    sizes = np.random.default_rng(1).integers(10, 500, size=(100, 2))
    step = {"now": 0}
    sampler = CurriculumBatchSampler(lengths, 5, steps=1000, start=0.3, current_step=lambda: step["now"],
                                     seed=0, sizes=sizes, bucket_batches=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    assert all(len(batch) == len(set(batch)) == 5 and max(batch) < 30 for batch in batches)
    unsorted = CurriculumBatchSampler(lengths, 5, steps=1000, start=0.3, current_step=lambda: 0, seed=0)
    assert padded_cost(batches, sizes) < 0.85 * padded_cost(list(unsorted), sizes)


@pytest.mark.parametrize("bad", [-1, 2.5, "four"])
def test_bad_bucket_settings_raise_user_error(bad):
    with pytest.raises(UserError, match="bucket_batches"):
        check_bucket_batches(bad)


def test_synthetic_and_folder_loaders_bucket_by_the_real_widths(tmp_path):
    dm = LineDataModule(seed=0, writers_per_font=3, lines_per_writer={"train": 6, "val": 2, "test": 2},
                        batch_size=4, bucket_batches=3)
    dm.setup("fit")
    widths = dm.train_dataset.pixel_widths
    first = dm.train_dataset[5]
    assert widths[5].tolist() == [first["style"].shape[-1], first["target"].shape[-1]]
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, BucketBatchSampler)
    seen = [text for batch in loader for text in batch.texts]
    assert sorted(seen) == sorted(dm.train_dataset.texts)

    folder = FolderDataModule(root=str(make_folder(tmp_path, writers=3, lines=6)), seed=1, val_fraction=0.2,
                              test_fraction=0.2, batch_size=2, bucket_batches=2)
    train = folder.datasets["train"]
    item = train[0]
    assert train.pixel_widths[0].tolist() == [item["style"].shape[-1], item["target"].shape[-1]]
    assert isinstance(folder.train_dataloader().batch_sampler, BucketBatchSampler)
