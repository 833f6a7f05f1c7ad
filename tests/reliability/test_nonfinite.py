"""Non-finite losses: the step is skipped with a warning naming it, a run of them stops training with a
message naming the step, and under DDP a NaN on one rank alone is skipped by every rank (no deadlock, no
fork)."""

from __future__ import annotations

import logging
from datetime import timedelta

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy
from reliability_helpers import TINY, compose_cfg

from imuru_pl.callbacks.distributed import weight_checksums
from imuru_pl.errors import UserError
from imuru_pl.models.imuru_module import ImuruModule
from imuru_pl.models.vae import LineVAE
from imuru_pl.precision import resolve_auto
from imuru_pl.tasks.train import build_module

ANY_RANK = -1


class InjectNaN(ImuruModule):
    """The real module, with the training loss turned NaN at chosen (rank, step) pairs."""

    bad: frozenset[tuple[int, int]] = frozenset()

    def _step(self, batch, stage):
        loss = super()._step(batch, stage)
        if (
            stage == "train"
            and {(self.global_rank, self.global_step), (ANY_RANK, self.global_step)} & self.bad
        ):
            return loss * float("nan")
        return loss


class RecordWeights(L.Callback):
    """Checksums of the weights after every optimiser step, on every rank; checks ranks agree at the end."""

    def __init__(self):
        self.after: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = weight_checksums(pl_module.model)

    def on_train_end(self, trainer, pl_module):
        if trainer.world_size > 1:
            gathered = trainer.strategy.all_gather(weight_checksums(pl_module.model))
            assert all(torch.equal(gathered[0], g) for g in gathered), "ranks ended with different weights"
        # Step 2 (global_step 1 -> 2) was skipped: weights after it equal those before it.
        assert torch.equal(self.after[1], self.after[2]), (
            f"rank {trainer.global_rank}: a skipped step moved weights"
        )
        assert not torch.equal(self.after[2], self.after[3]), "the step after it must train again"


def tiny_parts(tmp_path, vae_dir, bad: set[tuple[int, int]]):
    cfg = resolve_auto(compose_cfg([*TINY, "optim.lr=1e-2", "optim.warmup_steps=0"], tmp_path))  # as train.run
    L.seed_everything(0)
    module = build_module(cfg, LineVAE.from_pretrained(vae_dir))
    module.__class__ = InjectNaN
    module.bad = frozenset(bad)
    return module, instantiate(cfg.data)


def trainer(steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_a_nan_step_is_skipped_with_a_warning_naming_it(tmp_path, trained_run, caplog):
    module, data = tiny_parts(tmp_path, trained_run / "vae", {(ANY_RANK, 1)})
    record = RecordWeights()
    with caplog.at_level(logging.WARNING, logger="imuru_pl.models.imuru_module"):
        trainer(4, devices=1, callbacks=[record]).fit(module, datamodule=data)
    warnings = [r.getMessage() for r in caplog.records if "Non-finite" in r.getMessage()]
    assert warnings == ["Non-finite training loss at step 1; skipping this step."]
    assert set(record.after) == {1, 2, 3, 4}, "the step counter and schedule still advance"


def test_a_run_of_nan_steps_stops_training_naming_the_step(tmp_path, trained_run):
    module, data = tiny_parts(tmp_path, trained_run / "vae", {(ANY_RANK, s) for s in range(2, 50)})
    module.max_nonfinite_steps = 3
    with pytest.raises(
        UserError, match=r"^Training stopped at step 4: the loss was non-finite for 3 steps in a row"
    ):
        trainer(20, devices=1).fit(module, datamodule=data)


def test_a_nan_on_one_ddp_rank_is_skipped_by_every_rank(tmp_path, trained_run):
    """Rank 1 alone sees a NaN at step 1; with `return None` there, rank 0 would wait in all-reduce."""
    module, data = tiny_parts(tmp_path, trained_run / "vae", {(1, 1)})
    # A collective that waits longer than this fails instead of hanging the test.
    strategy = DDPStrategy(start_method="spawn", timeout=timedelta(seconds=90))
    trainer(4, devices=2, strategy=strategy, callbacks=[RecordWeights()]).fit(module, datamodule=data)
