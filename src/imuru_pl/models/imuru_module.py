"""LightningModule for Imuru: optimisation, logging and checkpoints around the plain `Imuru` module.

The frozen VAE is held outside the module's parameters and state dict (it is stored once, beside
the run, as a diffusers directory), so checkpoints carry only what trains.
"""

from __future__ import annotations

import copy
import logging

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import Tensor

from imuru_pl.data.batch import LineBatch
from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.latents import LatentEncoder
from imuru_pl.models.schedules import check_optim_config, lr_factor
from imuru_pl.models.vae import LineVAE
from imuru_pl.models.writing import write_lines

log = logging.getLogger(__name__)


class ImuruModule(L.LightningModule):
    def __init__(self, model: Imuru, vae: LineVAE, optim: dict, latent_cache: bool = False,
                 max_nonfinite_steps: int = 20):
        super().__init__()
        self.model = model
        self.optim = dict(optim)
        self.max_nonfinite_steps = max_nonfinite_steps
        self._nonfinite_run = 0
        self._drop_update = False
        # Plain attribute, not a submodule: frozen, not in the optimiser, not in checkpoints.
        self.__dict__["vae"] = vae.freeze()
        self.latents = LatentEncoder(vae, cache=latent_cache)
        # An exponential moving average of the weights (optim.ema_decay > 0): a frozen copy, in the state dict
        # (so checkpoints and resume keep it), never in the optimiser; validation, generation and the export
        # use it (`eval_model`).
        check_optim_config(self.optim)
        self.ema_decay = float(self.optim.get("ema_decay", 0.0) or 0.0)
        self.ema_model = copy.deepcopy(model).requires_grad_(False) if self.ema_decay > 0 else None

    @property
    def eval_model(self) -> Imuru:
        """The weights that validate, generate and are exported: the moving average when it is on."""
        return self.ema_model if self.ema_model is not None else self.model

    # -- device handling for the unregistered VAE -------------------------------------------
    def _vae_on_device(self) -> LineVAE:
        if self.vae.padding_latent.device != self.device:
            self.vae.to(self.device)
        return self.vae

    # -- one shared step ------------------------------------------------------------------------
    def _inputs(self, batch: LineBatch) -> dict[str, Tensor]:
        self._vae_on_device()
        return self.latents.model_inputs(self.model, batch, sample=self.training)[0]

    def _step(self, batch: LineBatch, stage: str) -> Tensor:
        inputs = self._inputs(batch)
        out = (self.model if stage == "train" else self.eval_model)(**inputs)
        loss, losses = out.loss, out.losses
        options = dict(batch_size=len(batch), sync_dist=stage != "train", on_step=stage == "train",
                       on_epoch=stage != "train")
        self.log(f"{stage}/loss", loss, prog_bar=True, **options)
        if len(losses) > 1:  # the terms, when auxiliary losses are switched on
            for name, value in losses.items():
                self.log(f"{stage}/loss_{name}", value.detach(), **options)
        return loss

    def training_step(self, batch: LineBatch, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        if self._finite_on_every_rank(loss):
            self._nonfinite_run = 0
            return loss
        # Skipped on every rank alike (the flag is all-reduced): a rank that skipped alone would leave
        # the others waiting in DDP's gradient all-reduce, or fork the replicas.
        self._nonfinite_run += 1
        self._drop_update = True
        if self.trainer.is_global_zero:
            log.warning("Non-finite training loss at step %d; skipping this step.", self.global_step)
        if self._nonfinite_run >= self.max_nonfinite_steps:
            raise UserError(
                f"Training stopped at step {self.global_step}: the loss was non-finite for "
                f"{self._nonfinite_run} steps in a row (lower optim.lr or check the data)."
            )
        # A zero that reaches every trainable parameter, so every rank runs the same backward and
        # all-reduce; the update itself is dropped in on_before_optimizer_step.
        zero = torch.zeros((), device=self.device)
        return sum((p.sum() for p in self.model.parameters() if p.requires_grad), zero) * 0.0

    def _finite_on_every_rank(self, loss: Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(())
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        return bool(finite.item() > 0)

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._drop_update:
            # Without gradients AdamW leaves weights and moments untouched (zero gradients would still
            # move them through momentum and weight decay). Lightning's global step and the LR schedule
            # still advance.
            optimizer.zero_grad(set_to_none=True)
            self._drop_update = False

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema_model is not None:
            self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        # The usual warm-up of the decay, (1 + n) / (10 + n), so the first steps' weights do not linger.
        step = self.trainer.global_step if self._trainer is not None else 0
        decay = min(self.ema_decay, (1.0 + step) / (10.0 + step))
        # Parameters only: the buffers (the VAE's statistics) are set before the module is built.
        averaged = list(self.ema_model.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in self.model.parameters()], 1.0 - decay)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint written with the other `optim.ema_decay` setting: start the average from its weights,
        or leave its average out."""
        state = checkpoint.get("state_dict", {})
        has_ema = any(key.startswith("ema_model.") for key in state)
        if self.ema_model is not None and not has_ema:
            state.update({"ema_" + key: value.clone() for key, value in list(state.items())
                          if key.startswith("model.")})
        elif self.ema_model is None and has_ema:
            for key in [key for key in state if key.startswith("ema_model.")]:
                del state[key]

    def validation_step(self, batch: LineBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: LineBatch, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    # -- generation for callbacks -----------------------------------------------------------------
    def generate_batch(self, batch: LineBatch, max_new_columns: int | None = None) -> list[Tensor]:
        """Generated line images (1, 64, w_i) in [-1, 1], on the CPU, for each (style, text) of a batch."""
        return write_lines(self.eval_model, self._vae_on_device(), batch.style, batch.style_widths,
                           batch.texts, max_new_columns)

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.optim
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=float(cfg["lr"]),
                                      weight_decay=float(cfg["weight_decay"]),
                                      betas=tuple(cfg.get("betas", (0.9, 0.999))), eps=float(cfg.get("eps", 1e-8)))
        kind = cfg.get("scheduler", "cosine")
        if kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=float(cfg["plateau_factor"]), patience=int(cfg["plateau_patience"]))
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch",
                                     "name": "train/lr"}}
        if kind == "constant" and int(cfg.get("warmup_steps", 0)) <= 0:
            return optimizer
        factor = lr_factor(cfg, total_steps=max(1, int(self.trainer.estimated_stepping_batches)),
                           time_progress=self._time_progress)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    def _time_progress(self) -> float:
        """Share of `trainer.max_time` spent so far (0 without a time cap); Lightning's timer keeps it
        across a resume."""
        timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None)
        if timer is None:
            return 0.0
        elapsed, left = timer.time_elapsed("train"), timer.time_remaining("train")
        return 0.0 if left is None or elapsed + left <= 0 else min(1.0, elapsed / (elapsed + left))
