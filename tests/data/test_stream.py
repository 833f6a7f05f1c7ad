"""The streamed synthetic writers (`data=synthetic_stream`): sample k is a pure function of (seed, k), loader
workers split the stream without overlap, held-out font families never enter it, and the cursor a checkpoint
keeps starts a new loader on the next unseen sample, in the uninterrupted run's order."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from imuru_pl.data.stream import StreamCursor, sample_index
from imuru_pl.errors import UserError

CONF = Path(__file__).resolve().parents[2] / "conf"
SMALL = [
    "data=synthetic_stream",
    "data.batch_size=4",
    "data.samples_per_epoch=24",  # 6 batches
    "data.lines_per_writer={train:2,val:2,test:2}",
    "data.latent_cache=false",
    "data.curriculum.steps=0",
    "data.num_workers=0",
]


def stream_module(*overrides: str):
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose("run", overrides=[*SMALL, *overrides])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


def epoch_keys(datamodule, batches: int | None = None) -> list[list[str]]:
    """The target keys of the next `batches` training batches (the rest of the epoch when None)."""
    return [list(batch.target_keys) for batch in islice(datamodule.train_dataloader(), batches)]


def test_sample_k_is_a_pure_function_of_seed_and_k():
    a, b = stream_module(), stream_module()
    for k in (0, 7, 123456789):
        pa, pb = a.renderer.render(k), b.renderer.render(k)
        assert (pa is None) == (pb is None)
        if pa is not None:
            assert pa.text == pb.text and pa.style_text == pb.style_text and pa.text != pa.style_text
            assert (pa.style_rgb == pb.style_rgb).all() and (pa.target_gray == pb.target_gray).all()
    other = stream_module("seed=7").renderer
    assert any(other.render(k).text != a.renderer.render(k).text for k in range(3)), "another seed, other samples"


def test_workers_split_the_stream_without_overlap_and_the_samples_do_not_depend_on_their_count():
    one = [k for batch in epoch_keys(stream_module()) for k in batch]
    two = [k for batch in epoch_keys(stream_module("data.num_workers=2")) for k in batch]
    assert len(one) == len(two) == 24 and len(set(two)) == 24, "every sample once"
    assert set(one) == set(two), "more workers change who renders a sample, not the samples"
    # each loader batch is consecutive samples of one worker's share (k = g, g + 2, ...)
    batches = epoch_keys(stream_module("data.num_workers=2"))
    assert {sample_index(key) % 2 for key in batches[0]} == {0} and {sample_index(k) % 2 for k in batches[1]} == {1}


def test_held_out_font_families_never_enter_the_stream():
    datamodule = stream_module()
    held_out = {w.font for split in ("val", "test") for w in datamodule.data.writers[split]}
    assert held_out and held_out == datamodule.renderer.held_out
    fonts = {datamodule.renderer.render(k).font for k in range(60) if datamodule.renderer.render(k) is not None}
    assert fonts and not fonts & held_out
    val_fonts = {datamodule.val_dataset[i]["writer"].rsplit("-", 1)[0] for i in range(len(datamodule.val_dataset))}
    assert val_fonts <= held_out, "validation lines are the fixed lines of held-out families"


def test_the_cursor_resumes_on_the_next_unseen_sample_in_the_uninterrupted_order():
    for workers in (0, 2):
        uninterrupted = epoch_keys(stream_module(f"data.num_workers={workers}"))
        first = stream_module(f"data.num_workers={workers}")
        taken = epoch_keys(first, batches=2)  # the run is killed after two batches
        state = first.state_dict()
        resumed = stream_module(f"data.num_workers={workers}")
        resumed.load_state_dict(state)
        rest = epoch_keys(resumed)
        assert taken + rest == uninterrupted, f"{workers} workers: the resumed epoch must go on exactly"
        assert resumed.state_dict()["stream"]["batches"] == 6


def test_batches_fetched_ahead_but_not_trained_on_are_not_committed():
    datamodule = stream_module()
    loader = datamodule.train_dataloader()
    fetched = list(islice(loader, 3))  # Lightning fetches one batch ahead of the step it runs
    loader.commit(2)  # two were trained on when the checkpoint is written
    assert datamodule.cursor.batches == 2
    assert datamodule.cursor.next_index == sample_index(fetched[2].target_keys[0])


def test_a_cursor_of_other_worker_counts_trains_on_exactly_the_unseen_samples():
    first = stream_module("data.num_workers=2")
    taken = {k for b in epoch_keys(first, batches=3) for k in b}
    cursor = StreamCursor()
    cursor.load_state_dict(first.state_dict()["stream"])
    assert all(cursor.seen(sample_index(k)) for k in taken)
    resumed = stream_module("data.num_workers=0")
    resumed.load_state_dict(first.state_dict())
    rest = {k for b in epoch_keys(resumed) for k in b}
    assert not rest & taken and len(rest) == 12  # the epoch's 3 remaining batches
    assert min(sample_index(k) for k in rest) == cursor.next_index


def test_skipped_samples_are_counted():
    datamodule = stream_module("data.max_width=320", "data.too_wide=drop")
    keys = epoch_keys(datamodule)
    assert sum(len(b) for b in keys) == 24
    counts = datamodule.skip_counts()
    assert counts["too_wide"] > 0, counts
    assert all(datamodule.renderer.render(sample_index(k)).target_gray.shape[1] <= 320 for b in keys for k in b)


@pytest.mark.parametrize("override, words", [
    ("data.samples_per_epoch=0", "samples_per_epoch"),
    ("data.too_wide=crop", "too_wide"),
])
def test_bad_stream_settings_are_one_sentence(override, words):
    with pytest.raises(Exception) as info:
        stream_module(override)
    error = info.value if isinstance(info.value, UserError) else info.value.__cause__
    assert isinstance(error, UserError) and words in str(error)


def test_a_batch_has_the_one_batch_format():
    batch = next(iter(stream_module().train_dataloader()))
    assert batch.style.shape[:2] == (4, 3) and batch.target.shape[:2] == (4, 1)
    assert batch.style.shape[2] == batch.target.shape[2] == 64 and torch.isfinite(batch.style).all()
    assert len(batch.texts) == 4 and all(batch.texts)


def test_what_only_fixed_lines_have_is_switched_off_for_the_stream():
    datamodule = stream_module("data.latent_cache=true", "data.curriculum.steps=300", "data.bucket_batches=4")
    assert datamodule.latent_cache is False and datamodule.curriculum["steps"] == 0
    assert datamodule.bucket_batches == 0


def test_extra_font_folders_are_indexed_and_an_unreadable_file_is_counted_not_fatal(tmp_path):
    import shutil

    from imuru_pl.data.fonts import package_folder
    from imuru_pl.data.stream import SKIP_REASONS
    from imuru_pl.data.streaming import SkipCounts

    folder = tmp_path / "system_fonts"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(sorted(package_folder("fontpkg_caveat").rglob("*.ttf"))[0], folder / "sub" / "extra.ttf")
    (folder / "broken.ttf").write_bytes(b"not a font")
    renderer = stream_module(f"data.system_font_dirs=[{folder}]").renderer
    assert renderer.entries == len(renderer.families) + 2 and not renderer._fonts, "indexed, not opened"
    extra = {Path(p).name: len(renderer.families) + i for i, p in enumerate(renderer.extra_files)}
    assert renderer.font(extra["extra.ttf"])[0].name == "caveat" and renderer.font(extra["broken.ttf"]) is None
    counts = SkipCounts(SKIP_REASONS)
    pairs = [renderer.render(k, counts) for k in range(40)]
    assert any(p is not None for p in pairs) and counts.totals()["unusable_font"] > 0, counts.totals()
