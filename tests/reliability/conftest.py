"""Fixtures of the reliability tests: one trained tiny model for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import TINY, run_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny training run through run.py (VAE, 6 steps, export), shared by the tests that need a model."""
    run_dir = tmp_path_factory.mktemp("trained_run")
    result = run_cli(*TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (run_dir / "model" / "model.safetensors").is_file()
    return run_dir
