"""Helpers shared by tests that drive the command line: the repo, a tiny training run, run.py in a subprocess
(waited for or in the background), and the config run.py would compose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]

# A training run small enough for CI (about a minute on one thread): tiny VAE, tiny T5, few lines.
TINY_TRAIN = [
    "task=train",
    "data.lines_per_writer={train:8,val:4,test:4}",
    "data.writers_per_font=3",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.num_workers=0",  # the demo's loader process is not worth its start for a dozen steps
    "vae.pretrained=null",  # the demo's bundled VAE aside: these runs train their own VAE stage, small
    "heldout.compare_with=null",  # nor the bundled starter's lines beside the held-out ones
    "vae.arch.block_out_channels=[8,8,8,8]",
    "vae.arch.norm_num_groups=4",
    "vae.train.max_steps=20",
    "vae.train.eval_lines=16",
    "vae.train.stop_lines=32",
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "callbacks.generation_samples.every_n_steps=6",
    "heldout.num_lines=4",
    "metrics.ocr.enabled=false",
    "metrics.enabled=true",  # the legibility curve (geometry only: OCR is off)
    "callbacks.legibility_curve.every_n_steps=6",
    "callbacks.legibility_curve.num_lines=4",
    "callbacks.legibility_curve.seen_lines=4",
    "model.max_new_columns=24",
    "model.t5.d_model=64",
    "model.t5.d_ff=128",
    "model.t5.num_layers=1",
    "model.t5.num_decoder_layers=1",
]

# The streamed synthetic writers, small: what tests render into shards (SHARDS = shards x samples each).
STREAM = ["data=synthetic_stream", "data.lines_per_writer={train:2,val:2,test:2}", "data.max_width=512"]
SHARDS = (4, 6)


def corrupt_shard_copies(shards: Path, folder: Path) -> list[str]:
    """Two damaged copies of `task=render_shards` output: shard 0 with sample 1's target image replaced by
    bytes that are no PNG (`<folder>/bad-000000.tar`), and shard 1 cut short (`<folder>/bad-000001.tar`)."""
    import io
    import tarfile

    folder.mkdir(parents=True)
    bad = folder / "bad-000000.tar"
    with tarfile.open(shards / "shard-000000.tar") as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            data = b"not a png" if member.name == "000000000001.gen.bw.png" else data
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    cut = folder / "bad-000001.tar"
    cut.write_bytes((shards / "shard-000001.tar").read_bytes()[:20000])
    return [str(bad), str(cut)]


def env(**extra: str) -> dict[str, str]:
    """The test environment for a child process: one thread, offline, the repository as project root."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "IMURU_PL_ROOT": str(REPO),
        **extra,
    }


def run_cli(*overrides: str, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    """`python run.py <overrides>` in a subprocess with the test environment; returns the finished process."""
    return subprocess.run([sys.executable, str(REPO / "run.py"), *overrides], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env(**extra_env), check=False)


def start_cli(*overrides: str, log: Path, **extra_env: str) -> subprocess.Popen:
    """`python run.py <overrides>` started in the background, output into `log`."""
    handle = open(log, "w")  # noqa: SIM115 - closed by the caller through the process object
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *overrides], stdout=handle,
                            stderr=subprocess.STDOUT, cwd=REPO, env=env(**extra_env))


def compose_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config run.py would build for `overrides`, with the output directory given explicitly."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("run", overrides=[*overrides, f"paths.output_dir={output_dir}"])
