"""A training run killed with SIGKILL mid-epoch and resumed with `run.py resume=<run dir>` ends exactly where
an uninterrupted run of the same seed ends: same step, same weights, optimiser and schedule, bit for bit."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
from reliability_helpers import TINY, run_cli, start_cli
from safetensors.torch import load_file

STEPS = 12  # two epochs of 6 batches
EVERY = 4  # checkpoint steps 4, 8, 12: the first two fall inside an epoch
SETTINGS = [
    *TINY,
    f"trainer.max_steps={STEPS}",
    f"callbacks.model_checkpoint.every_n_train_steps={EVERY}",
    "optim.lr=3e-3",  # a real learning rate, so a wrong batch shows in the weights
    "optim.warmup_steps=2",
    "optim.ema_decay=0.9",  # the moving average of the weights resumes bit for bit too
    # The latent cache is rebuilt after a resume, and the VAE's GroupNorm sees the padded batch width, so a
    # line re-encoded in another batch gets slightly different latents: exact only without it (see docs).
    "data.latent_cache=false",
    "data.num_workers=1",  # the demo's loader worker: loaders draw the global RNG when their workers start
]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# The streamed synthetic writers: an epoch of 24 samples (6 batches), every sample a new hand.
DATA = {"fixed": [], "stream": ["data=synthetic_stream", "data.samples_per_epoch=24"]}


def kill_after_first_checkpoint(run_dir: Path, log: Path, data: list[str]) -> int:
    """Start a run, SIGKILL it once last.ckpt exists and training has gone past it; the checkpoint's step."""
    process = start_cli(*SETTINGS, *data, f"hydra.run.dir={run_dir}", log=log)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while process.poll() is None and not last.exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)  # a step or so past the checkpoint, mid-epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout and process.stdout.close()
    assert process.returncode == -signal.SIGKILL, (
        f"the run ended before it was killed:\n{log.read_text()[-2000:]}"
    )
    assert not (run_dir / "model").exists(), "the killed run must not have exported anything"
    return load(last)["global_step"]


@pytest.mark.parametrize("data", DATA)
def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, data):
    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    step = kill_after_first_checkpoint(interrupted, tmp_path / "killed.log", DATA[data])
    assert step % EVERY == 0 and 0 < step < STEPS and step % 6 != 0, "the checkpoint must be mid-epoch"
    vae_written = (interrupted / "vae" / "config.json").stat().st_mtime_ns

    resumed = run_cli(f"resume={interrupted}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (interrupted / "train.log").read_text()
    assert "Reusing the line VAE already in" in log, "the resumed run must reuse the run's VAE"
    assert (interrupted / "vae" / "config.json").stat().st_mtime_ns == vae_written
    assert f"global step {step}" in log, "it must continue from the checkpoint"
    if data == "fixed":
        assert "skipping the" in log, "it must continue mid-epoch"
    assert not list(interrupted.parent.glob("interrupted?*")), (
        "the resumed run writes into the same directory"
    )

    if data == "stream":  # the stream goes on with the first sample the killed run had not trained on
        assert "Resuming the synthetic stream at sample" in log
        assert f"({step} batches taken)" in log, "the cursor counts the batches trained on, not those fetched"
    reference = run_cli(*SETTINGS, *DATA[data], f"hydra.run.dir={uninterrupted}")
    assert reference.returncode == 0, reference.stderr[-3000:]

    a, b = load(uninterrupted / "checkpoints" / "last.ckpt"), load(interrupted / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == STEPS
    assert a["loops"]["fit_loop"]["epoch_progress"] == b["loops"]["fit_loop"]["epoch_progress"]
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), f"weights differ: {name}"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), f"optimiser {key} differs"
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # The export (the best checkpoint by validation loss) agrees too.
    ea, eb = (
        load_file(uninterrupted / "model" / "model.safetensors"),
        load_file(interrupted / "model" / "model.safetensors"),
    )
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_resume_of_a_directory_that_is_not_a_run_is_one_line_and_exit_2(tmp_path):
    result = run_cli(f"resume={tmp_path}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "not a run directory" in errors[0]
