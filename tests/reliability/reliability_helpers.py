"""Helpers of the reliability tests: a tiny training configuration, run.py in a subprocess, in-process
composition of the config run.py would build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[2]

# Seconds per run on one thread: a 3-step VAE of 8 channels, a 1+1 layer T5 of width 32, 24 training lines
# of 3 writers in batches of 4 (6 steps per epoch), no OCR or held-out evaluation.
TINY = [
    "task=train",
    "data.lines_per_writer={train:8,val:2,test:2}",
    "data.writers_per_font=3",
    "data.fonts=[fontpkg_caveat,fontpkg_delius,fontpkg_kalam,fontpkg_satisfy]",
    "data.batch_size=4",
    "vae.train.max_steps=3",
    "vae.train.eval_lines=4",
    "vae.train.stop_lines=8",
    "vae.arch.block_out_channels=[8,8,8,8]",
    "vae.arch.norm_num_groups=4",
    "model.t5.d_model=32",
    "model.t5.d_ff=64",
    "model.t5.num_layers=1",
    "model.t5.num_decoder_layers=1",
    "model.t5.num_heads=2",
    "model.t5.d_kv=16",
    "model.max_new_columns=8",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.deterministic=true",
    "callbacks.model_checkpoint.every_n_train_steps=3",
    "callbacks.generation_samples.every_n_steps=100",
    "heldout.num_lines=2",
    "heldout.evaluate=false",
    "metrics.enabled=false",  # no legibility curve (OCR) during training
    "data.curriculum.steps=0",  # exact resumes and DDP: the curriculum is single-process, per-step sampling
]


def env(**extra: str) -> dict[str, str]:
    """The test environment for a child process: one thread, offline, the repository as project root."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "IMURU_PL_ROOT": str(ROOT),
        **extra,
    }


def run_cli(*overrides: str, timeout: int = 300, **extra_env: str) -> subprocess.CompletedProcess:
    """`python run.py <overrides>` in a subprocess; returns the finished process with its output."""
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env(**extra_env),
        check=False,
    )


def start_cli(*overrides: str, log: Path, **extra_env: str) -> subprocess.Popen:
    """`python run.py <overrides>` started in the background, output into `log`."""
    handle = open(log, "w")  # noqa: SIM115 - closed by the caller through the process object
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *overrides],
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env(**extra_env),
    )


def compose_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config run.py would build for `overrides`, with the output directory given explicitly."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("run", overrides=[*overrides, f"paths.output_dir={output_dir}"])
