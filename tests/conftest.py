"""Test-wide settings: one CPU thread, no network."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from cli_helpers import SHARDS, STREAM, TINY_TRAIN, run_cli  # noqa: E402


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny end-to-end training run through run.py, shared by the tests that need a trained model."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    # With the moving average of the weights on: the export, generation and task=heldout run
    # through it (its own tests: tests/models/test_ema_and_schedules.py).
    # And with the duration head fitted again after training, on hands of their own (duration_fit).
    result = run_cli(*TINY_TRAIN, "optim.ema_decay=0.5", "duration_fit.steps=3", "duration_fit.val_batches=1",
                     "+duration_fit.data.writers_per_font=4", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """WebDataset shards written by `task=render_shards` from the small stream: SHARDS[0] shards of
    SHARDS[1] samples (`shard-000000.tar`, ...) and their manifest."""
    out = tmp_path_factory.mktemp("shards") / "set"
    result = run_cli("task=render_shards", *STREAM, f"out={out}", f"shards.samples={SHARDS[0] * SHARDS[1]}",
                     f"shards.per_shard={SHARDS[1]}", "shards.processes=2", f"hydra.run.dir={out.parent / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out
