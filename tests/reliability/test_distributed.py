"""`trainer=ddp` through run.py: two CPU processes (gloo) share rank 0's run directory, the VAE stage runs
once, ranks end with identical weights, and only rank 0 writes logs and exports. `trainer=fsdp` composes and
builds its strategy."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate
from reliability_helpers import TINY, compose_cfg, run_cli

from imuru_pl.tasks import run_task


def test_ddp_on_two_cpu_processes_through_run_py(tmp_path):
    # No hydra.run.dir: the default timestamped directory must be the same for both ranks.
    result = run_cli(
        *TINY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", IMURU_PL_ROOT=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1, f"every rank must write into one run directory, found {runs}"
    run = runs[0]
    log = (run / "train.log").read_text()
    assert "All 2 ranks end training with identical weights." in log
    assert "[rank: 1]" not in log and "GLOBAL_RANK: 1" not in log, "rank 1 must not write into the log file"
    assert log.count("Saved the line VAE") == 1 and log.count("Exported model") == 1
    assert json.loads((run / "vae_metrics.json").read_text())["steps"] == 3
    assert (run / "model" / "model.safetensors").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / ".hydra").iterdir())) == 3  # config, hydra, overrides: rank 0's copy only
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["callbacks"]["ResumableTraining"]["rng"]["torch"].shape[0] == 2  # both ranks' RNG


def test_fsdp_composes_and_builds_its_strategy(tmp_path):
    cfg = compose_cfg(["task=train", "trainer=fsdp"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == "FSDPStrategy" and strategy._state_dict_type == "full"
    policy = strategy.kwargs["auto_wrap_policy"]
    assert "T5Block" in repr(policy)
    if torch.cuda.is_available():
        assert instantiate(cfg.trainer, logger=False).strategy is not None
    else:  # FSDP needs GPUs: on a CPU machine the refusal is one sentence, exit status 2
        with pytest.raises(SystemExit) as exit_info:
            run_task(cfg)
        assert exit_info.value.code == 2
