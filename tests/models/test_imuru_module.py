"""The LightningModule around Imuru: frozen VAE kept out of training, latent cache, learning."""

import lightning as L
import torch
from diffusers import AutoencoderKL
from torch.utils.data import DataLoader

from imuru_pl.data.batch import collate_lines
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.imuru_module import ImuruModule
from imuru_pl.models.latents import LatentEncoder, column_counts
from imuru_pl.models.vae import LineVAE

TINY_T5 = dict(d_model=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, d_ff=64)


def tiny_vae() -> LineVAE:
    torch.manual_seed(0)
    ae = AutoencoderKL(in_channels=3, out_channels=1, latent_channels=1, block_out_channels=(8, 8, 8, 8),
                       down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                       layers_per_block=1, norm_num_groups=4, mid_block_add_attention=False, sample_size=64)
    return LineVAE(ae, padding_latent=torch.full((8,), 0.5), stop_threshold=0.9,
                   latent_mean=torch.zeros(8), latent_std=torch.ones(8))


def sample(key: str, width: int, seed: int, text: str) -> dict:
    g = torch.Generator().manual_seed(seed)
    ink = (torch.rand(1, 64, width, generator=g) > 0.8).float()
    target = 1 - 2 * ink
    return dict(style=target.expand(3, -1, -1).clone(), target=target, text=text, writer="w", style_text="s",
                style_key=f"{key}/style", target_key=f"{key}/target")


def samples() -> list[dict]:
    return [sample("a", 40, 0, "ab"), sample("b", 72, 1, "xyz")]


def batch():
    return collate_lines(samples())


def module(cache: bool = False) -> ImuruModule:
    torch.manual_seed(0)
    model = Imuru(t5=TINY_T5, style_enc="full", trailing_blank_columns=3, max_new_columns=6)
    vae = tiny_vae()
    model.use_vae_stats(vae)
    return ImuruModule(model, vae, dict(lr=3e-3, weight_decay=0.0, scheduler="constant"), latent_cache=cache)


def test_vae_is_frozen_outside_optimiser_and_state_dict():
    m = module()
    assert not any(k.startswith("vae") for k in m.state_dict())
    assert all(not p.requires_grad for p in m.vae.parameters()) and not m.vae.training
    optimised = {id(p) for group in m.configure_optimizers().param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in m.vae.parameters()}


def test_latent_cache_gives_the_same_posterior_as_encoding():
    b = batch()
    vae = tiny_vae().freeze()
    direct = LatentEncoder(vae, cache=False).posterior(b.target, b.target_widths)
    cached = LatentEncoder(vae, cache=True)
    first = cached.posterior(b.target, b.target_widths, b.target_keys)
    again = cached.posterior(b.target, b.target_widths, b.target_keys)
    assert len(cached) == 2
    counts = column_counts(b.target_widths)
    for i, n in enumerate(counts.tolist()):
        assert torch.allclose(first[0][i, :n], direct[0][i, :n], atol=1e-5)
        assert torch.equal(first[0][i], again[0][i])
        assert torch.equal(first[0][i, n:], vae.padding_latent.expand(first[0].shape[1] - n, -1))


def test_a_lines_latents_do_not_depend_on_its_batch_mates():
    vae = tiny_vae().freeze()
    alone = collate_lines([sample("a", 40, 0, "ab")])
    together = batch()  # the same line padded beside a wider one
    one = LatentEncoder(vae).posterior(alone.target, alone.target_widths)[0][0]
    both = LatentEncoder(vae).posterior(together.target, together.target_widths)[0][0, : one.shape[0]]
    assert torch.equal(one, both)


def test_targets_end_in_padding_latent_and_mask_covers_width_plus_blanks():
    m = module()
    b = batch()
    target, counts = m.latents.target(b.target, b.target_widths, b.target_keys, sample=False)
    target, mask = m.model.pad_target(target, counts)
    assert counts.tolist() == [5, 9]
    assert mask.sum(1).tolist() == [8, 12]
    assert torch.equal(target[0, 5:8], m.vae.padding_latent.expand(3, -1))


def test_a_few_steps_lower_the_loss_and_generation_returns_images():
    m = module(cache=True)
    b = batch()
    trainer = L.Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    m.eval()
    with torch.no_grad():
        before = float(m.model(**m._inputs(b)).loss)
    trainer.fit(m, train_dataloaders=DataLoader(samples() * 30, batch_size=2, collate_fn=collate_lines))
    m.eval()
    with torch.no_grad():
        after = float(m.model(**m._inputs(b)).loss)
    assert after < before
    lines = m.generate_batch(b)
    assert len(lines) == 2 and all(img.shape[:2] == (1, 64) and img.shape[-1] % 8 == 0 for img in lines)


def test_aligned_letters_spread_letters_evenly_where_the_data_has_no_letter_starts():
    m = module()
    m.model = Imuru(t5=TINY_T5, style_enc="full", trailing_blank_columns=3, max_new_columns=6, letters={"enabled": True})
    m.model.use_vae_stats(m.vae)
    b = batch()  # hand-made samples, like real data: no target_starts
    assert b.target_starts is None
    inputs = m._inputs(b)
    # "xyz" over 72 px: 24 px (3 columns) each; "ab" over 40 px: a starts at 0, b at 20 (column centres 4, 12 | 20, ...)
    assert inputs["letter_index"][1, :9].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert inputs["letter_index"][0, :5].tolist() == [0, 0, 1, 1, 1]
    assert set(inputs["letter_index"][0, 5:].tolist()) == {2}, "then the EOS token"
    assert torch.isfinite(m.model(**inputs).loss)
