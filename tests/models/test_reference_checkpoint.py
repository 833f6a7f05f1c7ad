"""Reference (Hugging Face layout) Imuru/Emuru checkpoints: written from a tiny model, loaded, compared, run.

The oracle is a module built the way the reference builds it (a transformers T5ForConditionalGeneration with
an identity lm_head, the adapters, a diffusers AutoencoderKL) and run the way the reference runs it; its
state dict is saved under the reference parameter names with a reference-style config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration

from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.reference_checkpoint import (
    complete_t5_settings,
    is_reference_checkpoint,
    load_model_dir,
    load_reference_parts,
    t5_settings_from_state,
)
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.vae import LineVAE
from imuru_pl.pipeline import ImuruPipeline, load_reference_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TINY_T5 = {
    "vocab_size": 384,
    "d_model": 32,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "num_heads": 2,
    "d_kv": 16,
    "d_ff": 64,
    "dropout_rate": 0.0,
    "feed_forward_proj": "relu",
}
PADDING = [-0.4951, 0.8021, 0.3429, 0.5622, 0.5271, 0.5756, 0.7194, 0.6150]  # the reference's own value
THRESHOLD = 0.484982096850872


class ReferenceLike(nn.Module):
    """The reference's module layout and forward arithmetic, at tiny size."""

    def __init__(self, style_enc: str = "full", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.style_enc = style_enc
        self.T5 = T5ForConditionalGeneration(T5Config(**TINY_T5))
        self.T5.lm_head = nn.Identity()
        d = TINY_T5["d_model"]
        self.sos = nn.Embedding(1, d)
        self.vae_to_t5 = nn.Linear(8, d)
        self.t5_to_vae = nn.Linear(d, 8, bias=False)
        self.padding_token = nn.Parameter(torch.tensor([PADDING]), requires_grad=False)
        self.padding_token_threshold = nn.Parameter(torch.tensor(THRESHOLD), requires_grad=False)
        if style_enc == "MLP":
            self.style_encoder = nn.Linear(8, 1)
        elif style_enc == "MLP2":
            self.style_encoder = nn.Sequential(nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 1))
        # Reference VAE layout (RGB in, gray out, attention in the mid block, 32 norm groups), few layers.
        self.vae = AutoencoderKL(
            in_channels=3,
            out_channels=1,
            latent_channels=1,
            block_out_channels=[32, 32, 32, 32],
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=1,
            norm_num_groups=32,
            mid_block_add_attention=True,
            sample_size=64,
        )
        self.eval()

    def style_tokens(self, style: torch.Tensor) -> torch.Tensor:
        if self.style_enc == "mean":
            pooled = style.mean(dim=1, keepdim=True)
        elif self.style_enc in ("MLP", "MLP2"):
            pooled = (style * torch.softmax(self.style_encoder(style), dim=1)).sum(dim=1, keepdim=True)
        else:
            pooled = style
        return self.vae_to_t5(pooled)

    @torch.no_grad()
    def teacher_forced(self, ids, style, target) -> torch.Tensor:
        prefix = self.style_tokens(style)
        embeds = torch.cat([prefix, self.sos.weight[None], self.vae_to_t5(target[:, :-1])], dim=1)
        out = self.T5(ids, decoder_inputs_embeds=embeds).logits
        return self.t5_to_vae(out)[:, prefix.shape[1] :]

    @torch.no_grad()
    def greedy(self, ids, style, steps: int) -> torch.Tensor:
        """The reference generation loop (whole T5 re-run for every column), without stopping."""
        prefix, columns = self.style_tokens(style), []
        for _ in range(steps):
            written = [self.vae_to_t5(torch.stack(columns, dim=1))] if columns else []
            embeds = torch.cat([prefix, self.sos.weight[None], *written], dim=1)
            columns.append(self.t5_to_vae(self.T5(ids, decoder_inputs_embeds=embeds).logits[:, -1]))
        return torch.stack(columns, dim=1)

    def save_reference(self, directory: Path, kind: str = "imuru", keep_tied_copy: bool = False) -> Path:
        """Write config.json + model.safetensors under the reference names (tied copies dropped, like HF)."""
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}
        for tied in ("T5.encoder.embed_tokens.weight", "T5.decoder.embed_tokens.weight"):
            if not (keep_tied_copy and tied.startswith("T5.encoder")):
                state.pop(tied)
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        config = {
            "architectures": ["Emuru"],
            "model_type": "emuru",
            "t5_name_or_path": "google-t5/t5-small",
            "vae_name_or_path": "blowing-up-groundhogs/emuru_vae",
            "tokenizer_name_or_path": "google/byt5-small",
            "slices_per_query": 1,
            "vae_channels": 1,
            "torch_dtype": "float32",
            "transformers_version": "4.46.3",
        }
        if kind == "imuru":
            config["style_enc"] = self.style_enc
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        return directory


def columns(batch: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, width, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("style_enc", ["mean", "MLP", "MLP2", "full"])
def test_weights_land_where_the_reference_used_them(tmp_path, style_enc):
    reference = ReferenceLike(style_enc)
    parts = load_reference_parts(
        reference.save_reference(tmp_path / "ckpt", keep_tied_copy=style_enc == "MLP")
    )
    assert parts.kind == "imuru" and parts.model.style_enc == style_enc.lower()
    ids, text_mask = encode_texts(["a short text"])
    style, target = columns(1, 7, 1), columns(1, 9, 2)
    style_mask, target_mask = torch.ones(1, 7, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)
    with torch.no_grad():
        ours = parts.model(ids, text_mask, style, style_mask, target, target_mask).prediction
    torch.testing.assert_close(ours, reference.teacher_forced(ids, style, target), atol=2e-5, rtol=1e-4)
    # The VAE is the checkpoint's, and the stop constants are the checkpoint's.
    image = torch.rand(1, 3, 64, 48) * 2 - 1
    with torch.no_grad():
        expected = reference.vae.decode(reference.vae.encode(image).latent_dist.mean).sample
    torch.testing.assert_close(
        parts.vae.autoencoder.decode(parts.vae.encode(image, sample=False).transpose(1, 2)[:, None]).sample,
        expected,
        atol=1e-5,
        rtol=1e-4,
    )
    assert parts.vae.padding_latent.tolist() == pytest.approx(PADDING)
    assert parts.model.padding_latent.tolist() == pytest.approx(PADDING)
    assert parts.model.stop_threshold == pytest.approx(
        THRESHOLD
    ) and parts.vae.stop_threshold == pytest.approx(THRESHOLD)
    assert (parts.model.stop_window, parts.model.stop_min_hits) == (10, 9)
    assert parts.model.latent_mean.tolist() == [0.0] * 8 and parts.model.latent_std.tolist() == [1.0] * 8


def test_a_loaded_reference_model_generates_with_the_cached_generator(tmp_path):
    reference = ReferenceLike("full")
    directory = reference.save_reference(tmp_path / "ckpt")
    pipeline = load_reference_checkpoint(directory)
    ids, text_mask = encode_texts(["write this"])
    style = columns(1, 6, 3)
    mask = torch.ones(1, 6, dtype=torch.bool)
    written, lengths = pipeline.model.generate(ids, text_mask, style, mask, max_new_columns=8, stop=None)
    assert lengths.tolist() == [8]
    torch.testing.assert_close(written, reference.greedy(ids, style, 8), atol=5e-5, rtol=1e-4)
    # Whole pipeline: a style image file in, a 64 px line out (stopping on the checkpoint's padding latent).
    img = Image.new("RGB", (120, 80), (230, 225, 210))
    ImageDraw.Draw(img).line([(10, 60), (40, 20), (70, 60), (100, 20)], fill=(20, 20, 90), width=5)
    img.save(tmp_path / "style.png")
    pipeline.model.max_new_columns = 16
    line = pipeline(tmp_path / "style.png", "hello")
    assert line.height == 64 and 8 <= line.width <= 16 * 8


def test_exported_after_loading_it_reloads_identically(tmp_path):
    pipeline = load_reference_checkpoint(ReferenceLike("MLP2").save_reference(tmp_path / "ckpt"))
    exported = pipeline.save_pretrained(tmp_path / "exported")
    assert not is_reference_checkpoint(exported) and is_reference_checkpoint(tmp_path / "ckpt")
    again = load_model_dir(exported)
    for (name, a), (_, b) in zip(
        pipeline.model.state_dict().items(), again.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert again.model.stop_threshold == pytest.approx(THRESHOLD)
    assert again.vae.padding_latent.tolist() == pytest.approx(PADDING)


def test_missing_and_unexpected_tensors_are_one_error(tmp_path):
    directory = ReferenceLike("full").save_reference(tmp_path / "ckpt")
    from safetensors.torch import load_file

    state = load_file(str(directory / "model.safetensors"))
    state.pop("sos.weight")
    state.pop("vae.decoder.conv_out.bias")
    state["mystery.weight"] = torch.zeros(3)
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(UserError) as caught:
        load_reference_checkpoint(directory)
    message = str(caught.value)
    assert "2 missing (sos.weight, vae.decoder.conv_out.bias)" in message
    assert "1 unexpected (mystery.weight)" in message and message.count("\n") == 0


def test_emuru_loads_as_weights_but_does_not_pretend_to_generate(tmp_path):
    reference = ReferenceLike("full", seed=5)
    directory = reference.save_reference(tmp_path / "emuru", kind="emuru")
    with pytest.raises(UserError, match="is an Emuru checkpoint"):
        load_reference_checkpoint(directory)
    with pytest.raises(UserError, match="is an Emuru checkpoint"):
        load_model_dir(directory)
    parts = load_reference_parts(directory)
    assert parts.kind == "emuru" and parts.model.style_enc == "full"
    assert torch.equal(parts.model.encoder.embed_tokens.weight, reference.T5.shared.weight)
    ours = dict(parts.model.decoder.named_parameters())
    for name, tensor in reference.T5.decoder.named_parameters():
        if "embed_tokens" not in name:
            assert torch.equal(ours[name], tensor), name
    for name, tensor in reference.vae.state_dict().items():
        assert torch.equal(parts.vae.autoencoder.state_dict()[name], tensor), name
    model, vae = load_model_dir(directory, allow_emuru=True)
    assert isinstance(model, Imuru) and isinstance(vae, LineVAE)


@pytest.mark.parametrize("preset", ["small", "large"])
def test_t5_presets_are_recognised_from_tensor_shapes(preset):
    values = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "t5" / f"{preset}.yaml"))
    config = T5Config(**values)
    with torch.device("meta"):  # shapes only: t5-large is never allocated
        t5 = T5ForConditionalGeneration(config)
    state = {f"T5.{k}": v for k, v in t5.state_dict().items()}
    settings, name = complete_t5_settings(t5_settings_from_state(state))
    assert name == preset
    assert {k: settings[k] for k in values} == values


def test_the_generate_task_writes_with_a_reference_directory(tmp_path, monkeypatch):
    """`task=generate model_dir=<reference dir>`, with ImuruPipeline.from_pretrained detecting the layout."""
    from imuru_pl.tasks import generate

    directory = ReferenceLike("full").save_reference(tmp_path / "ckpt")
    original = ImuruPipeline.from_pretrained.__func__

    def detecting(cls, path, device="cpu"):  # the hook pipeline.from_pretrained needs (see docs/real_data.md)
        return (
            load_reference_checkpoint(path, device)
            if is_reference_checkpoint(path)
            else original(cls, path, device)
        )

    monkeypatch.setattr(generate.ImuruPipeline, "from_pretrained", classmethod(detecting))
    img = Image.new("L", (100, 64), 240)
    ImageDraw.Draw(img).line([(10, 50), (50, 15), (90, 50)], fill=10, width=5)
    img.save(tmp_path / "style.png")
    cfg = OmegaConf.create(
        {
            "model_dir": str(directory),
            "style": str(tmp_path / "style.png"),
            "text": "hi",
            "out": str(tmp_path / "out.png"),
            "device": "cpu",
        }
    )
    result = generate.run(cfg)
    assert Image.open(result["outputs"][0]).height == 64
