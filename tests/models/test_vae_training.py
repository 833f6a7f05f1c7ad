"""VAEModule: aligned crops, metrics that ignore batch padding, a few steps lower the loss, grids written."""

from __future__ import annotations

import lightning as L
import torch
from test_vae_lines import INK, PAPER, line_batch, tiny_autoencoder
from torch.utils.data import DataLoader

from imuru_pl.data.batch import collate_lines
from imuru_pl.models.vae import LineVAE
from imuru_pl.models.vae_module import (
    ReconstructionGrid,
    VAEModule,
    edge_l1,
    masked_image_errors,
    random_crops,
)


def test_random_crops_cut_style_and_target_at_the_same_place():
    batch = line_batch(["a long line of text to crop", "short"])
    style, target, widths, offsets = random_crops(batch, 64, torch.Generator().manual_seed(0))
    assert style.shape == (2, 3, 64, 64) and target.shape == (2, 1, 64, 64)
    assert widths[0] == 64 and 0 < widths[1] <= 64
    # Each style pixel is the paper/ink mix of the clean target's pixel at the same place.
    alpha = (1 - target) / 2
    paper = torch.tensor(PAPER).view(1, 3, 1, 1) / 127.5 - 1
    ink = torch.tensor(INK).view(1, 3, 1, 1) / 127.5 - 1
    expected = paper * (1 - alpha) + ink * alpha
    for i, width in enumerate(widths.tolist()):
        assert torch.allclose(style[i, :, :, :width], expected[i, :, :, :width], atol=1e-5)
    assert not torch.allclose(style[0], torch.roll(expected[0], 1, dims=-1), atol=1e-2)


def test_metrics_ignore_batch_padding():
    target = torch.ones(2, 1, 64, 32)
    target[:, :, 20:40, 4:12] = -1
    recon = target.clone()
    recon[1, :, :, 24:] = -1  # wrong only beyond image 1's true width
    widths = torch.tensor([32, 24])
    l1, psnr = masked_image_errors(recon, target, widths)
    assert torch.allclose(l1, torch.zeros(2))
    assert (psnr >= 99).all()
    recon[0, :, 0, 0] = -1  # one wrong pixel (error 1 on [0, 1]) among 64 x 32
    l1, psnr = masked_image_errors(recon, target, widths)
    assert torch.isclose(l1[0], torch.tensor(2 / (64 * 32)))
    assert torch.isclose(psnr[0], torch.tensor(10 * torch.log10(torch.tensor(64.0 * 32))), atol=1e-3)


def test_edge_loss_sees_misplaced_strokes():
    target = torch.ones(1, 1, 64, 32)
    target[..., 10:50, 10:12] = -1
    shifted = torch.roll(target, 3, dims=-1)
    assert edge_l1(target, target) == 0
    assert edge_l1(shifted, target) > 0


def eval_l1(vae: LineVAE, batch) -> float:
    vae.eval()
    with torch.no_grad():
        l1, _ = masked_image_errors(vae(batch.style), batch.target, batch.target_widths)
    vae.train()
    return float(l1.mean())


def test_a_few_steps_lower_the_loss(tmp_path):
    torch.manual_seed(0)
    batch = line_batch()
    vae = LineVAE(tiny_autoencoder())
    module = VAEModule(vae, lr=3e-3, warmup_steps=2, edge_weight=0.5, crop_width=64)
    before = eval_l1(vae, batch)
    samples = [
        {
            "style": batch.style[i, :, :, : batch.target_widths[i]],
            "target": batch.target[i, :, :, : batch.target_widths[i]],
            "text": batch.texts[i],
            "writer": "w",
            "style_text": "",
            "style_key": "",
            "target_key": "",
        }
        for i in range(len(batch))
    ]
    loader = DataLoader(samples * 4, batch_size=4, shuffle=True, collate_fn=collate_lines)
    grid = ReconstructionGrid(batch, every_n_steps=10, directory=tmp_path / "grids", max_lines=3)
    trainer = L.Trainer(
        max_steps=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[grid],
    )
    trainer.fit(module, loader)
    after = eval_l1(vae, batch)
    assert after < 0.6 * before, (before, after)
    pngs = sorted((tmp_path / "grids").glob("*.png"))
    assert len(pngs) >= 3 and grid.last_path in pngs
    from PIL import Image

    with Image.open(grid.last_path) as img:  # 3 rows of 64 px lines, 4 panels wide
        assert img.height >= 3 * 64 and img.width >= 4 * int(batch.target_widths[:3].max())
