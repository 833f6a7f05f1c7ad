"""The moving average of the weights (optim.ema_decay) and the learning-rate schedules (optim.scheduler)."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from imuru_pl.data.batch import collate_lines
from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.imuru_module import ImuruModule
from imuru_pl.models.schedules import check_optim_config, lr_factor

from test_imuru_module import TINY_T5, batch, samples, tiny_vae


def ema_module(decay: float = 0.9, **optim) -> ImuruModule:
    torch.manual_seed(0)
    model = Imuru(t5=TINY_T5, style_enc="full", trailing_blank_columns=3, max_new_columns=6)
    vae = tiny_vae()
    model.use_vae_stats(vae)
    settings = {**dict(lr=3e-3, weight_decay=0.0, scheduler="constant", ema_decay=decay), **optim}
    return ImuruModule(model, vae, settings, latent_cache=True)


def fit(module: ImuruModule, steps: int, **trainer) -> L.Trainer:
    options = dict(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    fit_trainer = L.Trainer(**{**options, **trainer})
    fit_trainer.fit(module, train_dataloaders=DataLoader(samples() * 50, batch_size=2, collate_fn=collate_lines))
    return fit_trainer


def test_the_average_follows_the_weights_by_the_warmed_up_decay_and_stays_out_of_the_optimiser():
    m = ema_module(decay=0.9)
    assert m.eval_model is m.ema_model and m.ema_model is not m.model
    assert all(not p.requires_grad for p in m.ema_model.parameters())
    optimised = {id(p) for group in m.configure_optimizers().param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in m.ema_model.parameters()}
    before = [p.detach().clone() for p in m.ema_model.parameters()]
    with torch.no_grad():
        for p in m.model.parameters():
            p.add_(1.0)
    m._update_ema()  # no trainer: step 0, so the decay is min(0.9, 1 / 10) = 0.1
    for old, new, ema in zip(before, m.model.parameters(), m.ema_model.parameters()):
        assert torch.allclose(ema, 0.1 * old + 0.9 * new, atol=1e-6)


def test_training_moves_the_average_behind_the_weights_and_validation_uses_it():
    m = ema_module(decay=0.9)
    trainer = fit(m, steps=8)
    gaps = [float((a - b).detach().abs().max()) for a, b in zip(m.model.parameters(), m.ema_model.parameters())]
    assert max(gaps) > 1e-4, "eight steps at lr 3e-3 leave the average behind the weights"
    val = trainer.validate(m, dataloaders=DataLoader(samples(), batch_size=2, collate_fn=collate_lines),
                           verbose=False)[0]["val/loss"]
    m.eval()
    b = batch()
    with torch.no_grad():
        inputs = m._inputs(b)
        average, trained = float(m.ema_model(**inputs).loss), float(m.model(**inputs).loss)
    assert val == pytest.approx(average, abs=1e-6) and abs(average - trained) > 1e-6
    assert m.generate_batch(b)[0].shape[:2] == (1, 64)
    off = ema_module(decay=0.0)
    assert off.ema_model is None and off.eval_model is off.model


def test_a_checkpoint_without_the_average_starts_it_from_its_weights_and_the_other_way_round():
    plain = ema_module(decay=0.0)
    with torch.no_grad():
        next(plain.model.parameters()).add_(0.5)
    checkpoint = {"state_dict": plain.state_dict()}
    averaged = ema_module(decay=0.9)
    averaged.on_load_checkpoint(checkpoint)
    averaged.load_state_dict(checkpoint["state_dict"])
    for a, b in zip(averaged.ema_model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)
    checkpoint = {"state_dict": averaged.state_dict()}
    plain.on_load_checkpoint(checkpoint)
    plain.load_state_dict(checkpoint["state_dict"])  # strict: the average was left out


def test_wsd_holds_the_rate_then_decays_it_over_the_last_share_of_steps_or_time():
    cfg = dict(scheduler="wsd", warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2)
    factor = lr_factor(cfg, total_steps=100)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(50) == 1.0 and factor(80) == 1.0
    assert factor(90) == pytest.approx(0.55) and factor(100) == pytest.approx(0.1)
    spent = {"share": 0.0}
    by_time = lr_factor(cfg, total_steps=10_000, time_progress=lambda: spent["share"])
    assert by_time(50) == 1.0
    spent["share"] = 0.9
    assert by_time(50) == pytest.approx(0.55), "the time cap ends the budget first"
    assert lr_factor(dict(scheduler="constant", warmup_steps=4), 100)(50) == 1.0
    cosine = lr_factor(dict(scheduler="cosine", warmup_steps=0, min_lr_ratio=0.0), 100)
    assert cosine(0) == pytest.approx(1.0) and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0)


def test_a_time_capped_run_ends_on_the_decayed_rate():
    m = ema_module(decay=0.0, scheduler="wsd", warmup_steps=0, min_lr_ratio=0.05, decay_fraction=1.0)
    trainer = fit(m, steps=100_000, max_time={"seconds": 3}, max_epochs=-1)
    assert trainer.global_step < 100_000, "the time cap stopped it"
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr < 0.3 * 3e-3, f"the rate fell with the time spent (lr {lr})"


@pytest.mark.parametrize("settings, words", [
    (dict(scheduler="linear"), "optim.scheduler must be one of"),
    (dict(scheduler="wsd", decay_fraction=0.0), "optim.decay_fraction"),
    (dict(scheduler="constant", ema_decay=1.0), "optim.ema_decay"),
])
def test_bad_schedule_settings_are_one_sentence(settings, words):
    with pytest.raises(UserError, match=words):
        check_optim_config(settings)
