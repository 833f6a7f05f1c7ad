"""Check, at the end of a distributed fit, that every rank holds the same weights.

DDP keeps replicas identical only if every rank takes every optimiser step; a rank that skips one
alone (a non-finite loss, an exception swallowed somewhere) silently forks the model. One all-gather
of per-tensor checksums at the end makes that visible in the log instead of in the results.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy

log = logging.getLogger(__name__)


def weight_checksums(module: torch.nn.Module) -> torch.Tensor:
    """One float64 number per parameter tensor (sum and index-weighted sum), cheap and order-sensitive."""
    sums = []
    for param in module.parameters():
        flat = param.detach().reshape(-1).double()
        weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64) / flat.numel()
        sums.append(torch.stack([flat.sum(), (flat * weights).sum()]))
    return torch.stack(sums).reshape(-1) if sums else torch.zeros(1, dtype=torch.float64)


class RankAgreement(L.Callback):
    """After a DDP `fit`, logs whether all ranks end with identical weights (an error if they do not)."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2 or not isinstance(trainer.strategy, DDPStrategy):
            return  # sharded strategies (FSDP) hold different pieces on each rank by design
        local = weight_checksums(pl_module).to(trainer.strategy.root_device)
        gathered = trainer.strategy.all_gather(local).cpu()  # (world_size, n)
        if not trainer.is_global_zero:
            return
        differing = [rank for rank in range(1, gathered.shape[0])
                     if not torch.equal(gathered[rank], gathered[0])]
        if differing:
            log.error("Ranks %s end training with weights that differ from rank 0's: the replicas diverged.",
                      ", ".join(map(str, differing)))
        else:
            log.info("All %d ranks end training with identical weights.", gathered.shape[0])
