"""Curriculum from short to long texts: which lines early batches may come from, and how that grows."""

from __future__ import annotations

import pytest

from imuru_pl.data.curriculum import CurriculumBatchSampler, check_curriculum
from imuru_pl.data.datamodule import LineDataModule
from imuru_pl.errors import UserError


def test_early_batches_come_from_the_shortest_lines_and_the_pool_grows():
    lengths = [100 - i for i in range(100)]  # item i has length 100 - i: the shortest are the last ones
    step = {"now": 0}
    sampler = CurriculumBatchSampler(lengths, 8, steps=10, start=0.2, current_step=lambda: step["now"], seed=0)
    longest_seen = []
    for batch in sampler:
        assert len(batch) == len(set(batch)) == 8
        longest_seen.append(max(lengths[i] for i in batch))
        step["now"] += 1
    assert longest_seen[0] <= 20, "step 0 draws from the shortest 20 % only"
    assert longest_seen[5] <= 60
    assert max(longest_seen[10:]) > 60, "after the curriculum every line can be drawn"
    assert sampler.share(0) == pytest.approx(0.2) and sampler.share(5) == pytest.approx(0.6)
    assert sampler.share(10) == sampler.share(1000) == 1.0
    assert len(sampler) == 13


def test_the_schedule_follows_the_trainer_step_not_the_epoch():
    lengths = list(range(50))
    sampler = CurriculumBatchSampler(lengths, 5, steps=100, start=0.1, current_step=lambda: 0)
    for _ in range(3):  # epochs: the step stays 0, so the pool stays the shortest 10 %
        assert all(max(lengths[i] for i in batch) < 5 for batch in sampler)


@pytest.mark.parametrize("bad", [{"steps": -1}, {"start": 0.0}, {"start": 1.5}, {"stepz": 10}])
def test_bad_curriculum_settings_raise_user_error(bad):
    with pytest.raises(UserError, match="curriculum"):
        check_curriculum(bad)


def test_datamodule_training_loader_uses_the_curriculum():
    dm = LineDataModule(seed=0, writers_per_font=3, lines_per_writer={"train": 6, "val": 2, "test": 2},
                        batch_size=4, curriculum={"steps": 1000, "start": 0.25})
    dm.setup("fit")
    lengths = sorted(len(t) for t in dm.train_dataset.texts)
    limit = lengths[max(4, int(0.25 * len(lengths) + 0.999)) - 1]
    batches = list(dm.train_dataloader())
    assert len(batches) == -(-len(dm.train_dataset) // 4)
    assert all(len(text) <= limit for batch in batches for text in batch.texts)


def test_the_curriculum_refuses_several_processes():
    from types import SimpleNamespace

    from imuru_pl.data.curriculum import check_single_process

    check_single_process(SimpleNamespace(world_size=1))
    check_single_process(None)
    with pytest.raises(UserError, match="single-process"):
        check_single_process(SimpleNamespace(world_size=2))
