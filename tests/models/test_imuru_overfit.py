"""A tiny Imuru memorises two samples: generation reproduces them and stops by itself."""

import math

import torch

from imuru_pl.models.generation import pad_latents
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.tokenizer import encode_texts

PAD = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])  # stands for a blank column's latent
K = 10  # trailing blank columns in the loss


def ink_columns(width: int, phase: float) -> torch.Tensor:
    """A smooth pattern with no component along PAD (cosine 0), so it never looks blank."""
    j = torch.arange(width, dtype=torch.float32)[:, None]
    k = torch.arange(8, dtype=torch.float32)[None, :]
    cols = 1.5 * torch.cos(0.6 * j + 0.9 * k + phase)
    return cols - (cols @ PAD)[:, None] * PAD / PAD.dot(PAD)


def test_tiny_model_overfits_two_samples_and_stops_at_the_right_length():
    torch.manual_seed(0)
    t5 = {"d_model": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "d_kv": 16, "d_ff": 128}
    model = Imuru(
        t5={**t5, "dropout_rate": 0.0},
        style_enc="full",
        trailing_blank_columns=K,
        latent_mean=0.1,
        latent_std=1.2,
        padding_latent=PAD,
        stop_threshold=0.8,
    )
    widths = [6, 11]
    ids, text_mask = encode_texts(["ab", "hello world"])
    gen = torch.Generator().manual_seed(1)
    style, style_mask = pad_latents([torch.randn(5, 8, generator=gen), torch.randn(8, 8, generator=gen)])
    inks = [ink_columns(widths[0], 0.0), ink_columns(widths[1], 2.0)]
    # Like white-padded images, a batch's short target continues with blank columns.
    blank_padded = [torch.cat([ink, PAD.expand(max(widths) - len(ink), 8)]) for ink in inks]
    target, target_mask = model.pad_target(torch.stack(blank_padded), torch.tensor(widths))
    assert target_mask.sum(1).tolist() == [widths[0] + K, widths[1] + K]

    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for step in range(1000):
        loss = model(ids, text_mask, style, style_mask, target, target_mask).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if loss.item() < 5e-5:
            break
    assert loss.item() < 2e-4, f"did not fit: loss {loss.item():.4f} after {step + 1} steps"

    columns, lengths = model.generate(ids, text_mask, style, style_mask, max_new_columns=40)
    assert lengths.tolist() == widths, "each sample must stop by itself at its own width"
    for row, ink in enumerate(inks):
        error = (columns[row, : widths[row]] - ink).pow(2).mean().item()
        assert error < 0.01 * ink.pow(2).mean().item(), f"sample {row}: MSE {error:.4f}"
        assert not math.isnan(error)
    # The short sample finished while the long one ran on; its row shows blank from then on.
    torch.testing.assert_close(columns[0, widths[0] :], PAD.expand(widths[1] - widths[0], 8))
    alone, alone_length = model.generate(
        ids[:1, :3], text_mask[:1, :3], style[:1, :5], style_mask[:1, :5], max_new_columns=40
    )
    assert alone_length.tolist() == [widths[0]]
    torch.testing.assert_close(alone[0], columns[0, : widths[0]], atol=1e-5, rtol=0)
