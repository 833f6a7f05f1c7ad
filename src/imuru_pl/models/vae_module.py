"""Training logic for the line VAE: losses, held-out metrics and a reconstruction grid.

Each step trains both ways the Imuru stage uses the encoder: paper/colour style -> clean line and
clean line -> clean line (part of the batch each), on random crops of the same line (style and target
are pixel-aligned). With `vae.train.reader_weight` > 0 a frozen line reader also reads each
reconstruction (the letters wholly inside its crop) and its CTC loss is added: Emuru's recognition loss.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from imuru_pl.data.batch import COLUMN_PX, LineBatch, collate_lines, round_up, spread_samples
from imuru_pl.errors import UserError
from imuru_pl.models.reader import FRAME_PX, LineReader
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.vae import LineVAE, convert_channels
from imuru_pl.visual import rows_grid, to_chw

log = logging.getLogger(__name__)


def width_mask(widths: Tensor, width: int) -> Tensor:
    """(B, 1, 1, W) float mask: 1 inside each image's true width, 0 on batch padding."""
    return (torch.arange(width, device=widths.device)[None, :] < widths[:, None]).float()[:, None, None, :]


def masked_image_errors(recon: Tensor, target: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image L1 (on [-1, 1]) and PSNR (dB, on [0, 1]) over each image's true width only."""
    mask = width_mask(widths, target.shape[-1])
    pixels = (mask.sum(dim=(1, 2, 3)) * target.shape[2]).clamp_min(1)
    diff = (recon.float() - target.float()) * mask
    l1 = diff.abs().sum(dim=(1, 2, 3)) / pixels
    mse01 = (diff / 2).pow(2).sum(dim=(1, 2, 3)) / pixels
    psnr = 10 * torch.log10(1.0 / mse01.clamp_min(1e-10))
    return l1, psnr


def edge_l1(recon: Tensor, target: Tensor) -> Tensor:
    """L1 between horizontal and vertical pixel differences: rewards sharp, correctly placed stroke edges."""
    dx = (recon[..., :, 1:] - recon[..., :, :-1]) - (target[..., :, 1:] - target[..., :, :-1])
    dy = (recon[..., 1:, :] - recon[..., :-1, :]) - (target[..., 1:, :] - target[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def random_crops(
    batch: LineBatch, width: int | None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The same random window of `width` px from each style and target line (within its true width).

    Lines narrower than the window start at 0 and keep their white padding. Returns style, target,
    the true width of each crop and where (px) each crop starts in its line.
    """
    style, target, widths = batch.style, batch.target, batch.target_widths
    if width is None or width >= target.shape[-1]:
        return style, target, widths, torch.zeros_like(widths)
    spare = (widths - width).clamp_min(0).cpu()
    offsets = (torch.rand(len(widths), generator=generator) * (spare + 1).float()).long()
    index = offsets[:, None] + torch.arange(width)[None, :]  # (B, width)
    index = index.to(target.device)

    def take(images: Tensor) -> Tensor:
        return torch.gather(
            images, 3, index[:, None, None, :].expand(-1, images.shape[1], images.shape[2], -1)
        )

    offsets = offsets.to(widths.device)
    crop_widths = (widths - offsets).clamp(max=width)
    return take(style), take(target), crop_widths, offsets


def whole_letters(
    text: str, starts: Tensor | None, line_width: int, offset: int, width: int
) -> tuple[int, int, str] | None:
    """The letters of a line drawn wholly inside its crop [offset, offset + width): their span in crop
    px and their text; None when no letter fits.

    Letter i spans from its start to the next one's (the last to the line's end). Without letter starts
    (data other than the synthetic) only a crop holding the whole line can be read.
    """
    if starts is None or len(starts) != len(text):
        whole = offset == 0 and width >= line_width and text.strip()
        return (0, line_width, text) if whole else None
    starts = starts.float()
    ends = torch.cat([starts[1:], starts.new_tensor([float(line_width)])])
    inside = ((starts >= offset) & (ends <= offset + width)).nonzero().flatten()
    if len(inside) == 0:
        return None
    first, last = int(inside[0]), int(inside[-1])
    if not text[first : last + 1].strip():
        return None
    left = max(0, math.floor(float(starts[first]) - offset))
    right = min(width, math.ceil(float(ends[last]) - offset))
    return (left, right, text[first : last + 1]) if right > left else None


def start_white(vae: LineVAE) -> LineVAE:
    """Initialise the decoder to draw blank paper: output bias +1 (white), small output weights.

    Lines are mostly paper; starting there spares the first few hundred steps of learning the
    background and lets the gradients go to the strokes at once.
    """
    conv_out = vae.autoencoder.decoder.conv_out
    with torch.no_grad():
        conv_out.bias.fill_(1.0)
        conv_out.weight.mul_(0.1)
    return vae


class VAEModule(L.LightningModule):
    """Fits a `LineVAE`: L1 + kl_weight * KL, plus optional MSE and edge terms, in both directions.

    Each step feeds part of the batch as paper style and the rest (`clean_fraction`) as clean lines,
    always against the clean target: both encodings the Imuru stage makes are trained every step.
    With a `reader` and `reader_weight` > 0, `reader_weight` times the frozen reader's CTC loss of
    reading each reconstruction is added (Emuru's recognition loss; docs/vae.md).

    L1 alone stalls on an all-white output (the per-pixel median of mostly-paper lines, where its
    gradients cancel); a squared-error term keeps pulling towards the strokes and is what PSNR measures.
    """

    def __init__(
        self,
        vae: LineVAE,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.05,
        kl_weight: float = 1e-6,
        mse_weight: float = 1.0,
        edge_weight: float = 1.0,
        ink_weight: float = 0.0,
        crop_width: int | None = 128,
        clean_fraction: float = 0.5,
        sample_posterior: bool = True,
        reader: LineReader | None = None,
        reader_weight: float = 0.0,
    ):
        super().__init__()
        if crop_width is not None and (crop_width < COLUMN_PX or crop_width % COLUMN_PX):
            raise UserError(
                f"vae.train.crop_width must be a positive multiple of {COLUMN_PX} px or null; "
                f"got {crop_width}."
            )
        if ink_weight < 0:
            raise UserError(f"vae.train.ink_weight cannot be negative; got {ink_weight}.")
        if not 0 <= clean_fraction <= 1:
            raise UserError(f"vae.train.clean_fraction must lie between 0 and 1; got {clean_fraction}.")
        if reader_weight < 0 or (reader_weight > 0 and reader is None):
            raise UserError(f"vae.train.reader_weight must be 0 (off) or positive with a reader; got {reader_weight}.")
        self.save_hyperparameters(ignore=["vae", "reader"])
        self.vae = vae
        # Plain attribute, not a submodule: Lightning's train() must not switch its batch norms to training.
        self.__dict__["reader"] = reader.eval().requires_grad_(False) if reader is not None else None

    # -- loss ------------------------------------------------------------------------------------
    def _reconstruct(self, images: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """Unclamped reconstruction (so gradients flow at the range ends) and per-image KL."""
        dist = self.vae.posterior(images)
        latent = dist.sample() if sample else dist.mean
        recon = convert_channels(self.vae.autoencoder.decode(latent).sample, 1)
        return recon, dist.kl()

    def losses(
        self, inputs: Tensor, targets: Tensor, sample: bool, letters: list | None = None
    ) -> dict[str, Tensor]:
        """The training losses; `letters` (one `whole_letters` result per line) turns on the reader's."""
        recon, kl = self._reconstruct(inputs, sample)
        hp = self.hparams
        # Ink pixels (dark in the clean target) weigh 1 + ink_weight: small marks such as i-dots and
        # commas cover few pixels, and a plain mean lets the decoder drop them almost for free.
        weights = 1.0 + hp.ink_weight * (1.0 - targets).clamp(0.0, 2.0) / 2.0
        weights = weights / weights.mean()
        parts = {"l1": ((recon - targets).abs() * weights).mean(), "kl": kl.mean()}
        loss = parts["l1"] + hp.kl_weight * parts["kl"]
        if hp.mse_weight > 0:
            parts["mse"] = ((recon - targets).pow(2) * weights).mean()
            loss = loss + hp.mse_weight * parts["mse"]
        if hp.edge_weight > 0:
            parts["edge"] = edge_l1(recon, targets)
            loss = loss + hp.edge_weight * parts["edge"]
        if letters is not None and self.reader is not None and hp.reader_weight > 0:
            parts["reader"] = self.reading_loss(recon, letters)
            loss = loss + hp.reader_weight * parts["reader"]
        parts["loss"] = loss
        return parts

    def reading_loss(self, recon: Tensor, letters: list) -> Tensor:
        """The reader's CTC of the whole letters of each reconstruction, cut out and padded with paper."""
        spans = [(i, *item) for i, item in enumerate(letters) if item is not None]
        if not spans:
            return recon.new_zeros(())
        self.reader.to(recon.device)
        width = round_up(max(right - left for _, left, right, _ in spans), FRAME_PX)
        images = torch.stack([
            F.pad(recon[i, :, :, left:right].clamp(-1, 1), (0, width - (right - left)), value=1.0)
            for i, left, right, _ in spans
        ])
        widths = torch.tensor([right - left for _, left, right, _ in spans], device=recon.device)
        text_ids = encode_texts([text for *_, text in spans], device=recon.device)[0]
        return self.reader.ctc(images.float(), widths, text_ids)

    def crop_letters(self, batch: LineBatch, crop_widths: Tensor, offsets: Tensor) -> list:
        """`whole_letters` of every line's crop."""
        starts = batch.target_starts or [None] * len(batch)
        return [
            whole_letters(text, start, int(line_width), int(offset), int(width))
            for text, start, line_width, offset, width in zip(
                batch.texts, starts, batch.target_widths.tolist(), offsets.tolist(), crop_widths.tolist()
            )
        ]

    def training_inputs(
        self, batch: LineBatch, crops: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Cropped inputs and clean targets: the first lines go in as paper style, the last `clean_fraction`
        of them as their clean image, so every step trains both directions at the cost of one."""
        style, target, _, _ = crops if crops is not None else random_crops(batch, self.hparams.crop_width)
        fraction = self.hparams.clean_fraction
        n_clean = round(len(target) * fraction)
        if 0 < fraction < 1 and len(target) > 1:
            n_clean = min(max(n_clean, 1), len(target) - 1)  # both directions in every step
        split = len(target) - n_clean
        inputs = torch.cat(
            [
                convert_channels(style[:split], self.vae.in_channels),
                convert_channels(target[split:], self.vae.in_channels),
            ]
        )
        return inputs, target

    def training_step(self, batch: LineBatch, batch_idx: int) -> Tensor:
        crops = random_crops(batch, self.hparams.crop_width)
        inputs, targets = self.training_inputs(batch, crops)
        letters = self.crop_letters(batch, crops[2], crops[3]) if self.hparams.reader_weight > 0 else None
        parts = self.losses(inputs, targets, self.hparams.sample_posterior, letters)
        for key, value in parts.items():
            self.log(f"train/{key}", value.detach(), prog_bar=key == "loss", batch_size=len(inputs))
        return parts["loss"]

    # -- held-out metrics --------------------------------------------------------------------------
    def validation_step(self, batch: LineBatch, batch_idx: int) -> None:
        for name, images in (("", batch.style), ("_clean", batch.target)):
            recon = self.vae(images)
            l1, psnr = masked_image_errors(recon, batch.target, batch.target_widths)
            size = len(batch)
            self.log(f"val/l1{name}", l1.mean(), batch_size=size, sync_dist=True)
            self.log(f"val/psnr{name}", psnr.mean(), batch_size=size, sync_dist=True, prog_bar=not name)
            if not name:
                self.log("val/loss", l1.mean(), batch_size=size, sync_dist=True)

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.vae.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(int(hp.warmup_steps), total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def spread_lines(datamodule, count: int) -> LineBatch | None:
    """`count` validation lines spread evenly over the validation set (so several writers appear)."""
    dataset = getattr(datamodule, "val_dataset", None)
    if dataset is None:
        return next(iter(datamodule.val_dataloader()), None)
    samples = spread_samples(dataset, count)
    return collate_lines(samples) if samples else None


class ReconstructionGrid(L.Callback):
    """Every N steps: one row per fixed held-out line, style | from style | from clean | clean target.

    Written to TensorBoard (`val/reconstructions`) and as PNG files under `directory`.
    """

    def __init__(
        self,
        lines: LineBatch | None = None,
        every_n_steps: int = 200,
        directory: str | Path | None = None,
        max_lines: int = 6,
    ):
        self.lines = lines
        self.every_n_steps = every_n_steps
        self.directory = Path(directory) if directory is not None else None
        self.max_lines = max_lines
        self.last_path: Path | None = None
        self.last_step: int | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        if self.lines is None and trainer.datamodule is not None:
            self.lines = spread_lines(trainer.datamodule, self.max_lines)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: VAEModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0:
            self.write(trainer, pl_module, step)

    def on_train_end(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        self.write(trainer, pl_module, trainer.global_step)

    @rank_zero_only
    def write(self, trainer: L.Trainer, pl_module: VAEModule, step: int) -> None:
        if self.lines is None or step == self.last_step:
            return
        self.last_step = step
        lines = self.lines
        n = min(self.max_lines, len(lines))
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            style = lines.style[:n].to(pl_module.device)
            target = lines.target[:n].to(pl_module.device)
            from_style, from_clean = pl_module.vae(style).cpu(), pl_module.vae(target).cpu()
        pl_module.train(was_training)
        rows = []
        for i in range(n):
            w = int(lines.target_widths[i])
            rows.append(
                [
                    lines.style[i, :, :, :w],
                    from_style[i, :, :, :w],
                    from_clean[i, :, :, :w],
                    lines.target[i, :, :, :w],
                ]
            )
        grid = rows_grid(rows)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/reconstructions", to_chw(grid), step)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.last_path = self.directory / f"reconstructions_step{step:06d}.png"
            grid.save(self.last_path)
