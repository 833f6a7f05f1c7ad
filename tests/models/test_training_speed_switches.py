"""The training speed switches: the T5's attention implementation (`model.attention`) and bfloat16 mixed
precision (`trainer.precision=bf16-mixed`), under which the frozen VAE still encodes in float32, and `auto` for
both, which picks them by the CPU (imuru_pl/precision.py)."""

import lightning as L
import pytest
import torch
from cli_helpers import compose_cfg
from test_imuru_model import padded_batch, tiny_model
from test_imuru_module import batch, module, samples
from torch.utils.data import DataLoader

from imuru_pl import precision
from imuru_pl.data.batch import collate_lines
from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru


def gradients(model: Imuru, inputs) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    model(*inputs).loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_eager_and_sdpa_attention_give_the_same_loss_gradients_and_generation():
    # eval(): no dropout or label noise, whose random draws the two implementations would take differently
    sdpa = tiny_model(positions=True).eval()
    eager = tiny_model(positions=True, attention="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.encoder.config._attn_implementation == "sdpa"
    assert eager.encoder.config._attn_implementation == eager.decoder.config._attn_implementation == "eager"
    inputs = padded_batch()
    torch.testing.assert_close(gradients(eager, inputs), gradients(sdpa, inputs), atol=1e-5, rtol=1e-4)
    ids, text_mask, style, style_mask, _, _ = inputs
    with torch.no_grad():
        a = sdpa.generate(ids, text_mask, style, style_mask, max_new_columns=12, stop=None)
        b = eager.generate(ids, text_mask, style, style_mask, max_new_columns=12, stop=None)
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=0)


def test_the_attention_choice_is_exported_and_checked(tmp_path):
    model = tiny_model(attention="eager")
    again = Imuru.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.attention == "eager" and again.decoder.config._attn_implementation == "eager"
    with pytest.raises(UserError, match="attention must be one of sdpa, eager"):
        tiny_model(attention="flash")


def test_the_vae_encodes_in_float32_inside_bfloat16_autocast():
    m = module(cache=False)
    b = batch()
    plain = m.latents.posterior(b.target, b.target_widths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = m.latents.posterior(b.target, b.target_widths)
    assert mixed[0].dtype == torch.float32
    assert torch.equal(plain[0], mixed[0]) and torch.equal(plain[1], mixed[1])


@pytest.mark.filterwarnings("ignore:.*does not have many workers")
@pytest.mark.filterwarnings("ignore:Precision bf16-mixed is not supported by the model summary")
def test_bf16_mixed_training_lowers_the_loss_and_keeps_float32_weights():
    m = module(cache=True)
    b = batch()
    m.eval()
    with torch.no_grad():
        before = float(m.model(**m._inputs(b)).loss)
    trainer = L.Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", precision="bf16-mixed")
    trainer.fit(m, train_dataloaders=DataLoader(samples() * 30, batch_size=2, collate_fn=collate_lines))
    assert all(p.dtype == torch.float32 for p in m.model.parameters())
    assert all(p.dtype == torch.float32 for p in m.vae.parameters())
    assert all(mean.dtype == torch.float32 for mean, _ in m.latents._cache.values())
    m.eval()
    with torch.no_grad():
        after = float(m.model(**m._inputs(b)).loss)
    assert after < 0.8 * before


def test_bfloat16_autocast_keeps_the_loss_and_the_gradient_direction():
    model = tiny_model(positions=True, attention="eager").eval()
    inputs = padded_batch()
    full = gradients(model, inputs)
    loss = float(model(*inputs).loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_loss = float(model(*inputs).loss)
        mixed = gradients(model, inputs)
    assert abs(mixed_loss - loss) < 0.01 * loss
    assert float(torch.nn.functional.cosine_similarity(full, mixed, dim=0)) > 0.99
    assert not torch.equal(full, mixed), "the products must really have run in bfloat16"


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_and_attention_follow_the_cpu(monkeypatch, tmp_path, native):
    """The demo's `auto`: bf16-mixed with eager attention where the CPU has native bfloat16 kernels, float32 with
    sdpa where a bf16 step would run ~20x slower; a stage's own precision and explicit values are kept."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cfg = precision.resolve_auto(compose_cfg(["experiment=demo"], tmp_path))
    assert cfg.trainer.precision == ("bf16-mixed" if native else "32")
    assert cfg.model.attention == ("eager" if native else "sdpa")
    assert str(cfg.vae.trainer.precision) == "32"
    assert precision.resolve_auto(cfg) == cfg  # idempotent
    explicit = precision.resolve_auto(compose_cfg(["experiment=demo", "trainer.precision=bf16-mixed",
                                                   "model.attention=sdpa"], tmp_path))
    assert (explicit.trainer.precision, explicit.model.attention) == ("bf16-mixed", "sdpa")
    assert precision.training_precision("auto", "gpu") == "bf16-mixed"
    assert precision.attention_for("bf16-mixed", "gpu") == "sdpa"


def test_bf16_on_a_cpu_without_native_kernels_warns_once(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision, "_warned", set())
    with caplog.at_level("WARNING", logger=precision.__name__):
        assert precision.training_precision("bf16-mixed", "cpu") == "bf16-mixed"
        precision.training_precision("bf16-mixed", "cpu")
    assert [r.message.count("about 20x slower than float32") for r in caplog.records] == [1]
