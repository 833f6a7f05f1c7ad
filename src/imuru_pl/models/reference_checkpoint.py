"""Published Imuru and Emuru checkpoints (Hugging Face layout, local directory) loaded into this framework.

The reference saves one `transformers.PreTrainedModel` directory: `config.json` (model_type "imuru" or
"emuru", `t5_name_or_path`, `style_enc`, ...) and safetensors holding

    T5.*                 a T5ForConditionalGeneration (shared embedding, encoder, decoder; lm_head = identity)
    vae.*                a diffusers AutoencoderKL (RGB in, gray out, 1 latent channel)
    sos.weight, vae_to_t5.weight/.bias, t5_to_vae.weight, style_encoder.* (Imuru, style_enc MLP/MLP2)
    padding_token (1 x 8), padding_token_threshold   the blank-column latent and the stop threshold

T5 sizes are read from the tensor shapes and named after the framework's presets (conf/model/t5/*.yaml)
when they match. Two differences are folded into the weights so that outputs are unchanged: the reference
T5 scales the decoder output by d_model^-0.5 before its identity lm_head (folded into `t5_to_vae`), and it
uses raw latents (latent mean 0, std 1 here).

Imuru checkpoints load as a model and its VAE (`load_reference_model`; `pipeline.load_reference_checkpoint`
wraps them in an `ImuruPipeline`) and generate with the cached generator. Emuru reads the style image's
transcription together with the target text and continues the style image's own columns; that is not what
this generator does, so Emuru loads only as weights (`load_reference_parts`), e.g. to fine-tune.
`load_model_dir` loads either layout: an exported imuru-pl model or a reference checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from imuru_pl.bundled import resolve
from imuru_pl.errors import UserError
from imuru_pl.models.imuru import LATENT_CHANNELS, Imuru
from imuru_pl.models.t5_stacks import T5_DEFAULTS
from imuru_pl.models.vae import LineVAE

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
VAE_SUBDIR = "vae"  # an exported imuru-pl model keeps its frozen VAE in this folder
REFERENCE_KEYS = (
    "t5_name_or_path",
    "vae_name_or_path",
    "tokenizer_name_or_path",
    "architectures",
    "auto_map",
)
STYLE_ENCODERS = {"mean": "mean", "mlp": "mlp", "mlp2": "mlp2", "full": "full"}
EMBEDDINGS = ("T5.shared.weight", "T5.encoder.embed_tokens.weight", "T5.decoder.embed_tokens.weight")
# Saved by some transformers versions but unused by the reference forward pass.
IGNORED = ("T5.lm_head.weight", "T5.decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
T5_SHAPE_KEYS = ("d_model", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "d_ff")
# The reference line VAE (Emuru's): fields a state dict cannot tell are taken from here.
REFERENCE_VAE = {
    "in_channels": 3,
    "out_channels": 1,
    "latent_channels": 1,
    "block_out_channels": [32, 64, 128, 256],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "mid_block_add_attention": True,
    "sample_size": 64,
    "scaling_factor": 1.0,
}
# Attention parameter names of diffusers before 0.14, renamed when found.
OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
STOP_WINDOW, STOP_MIN_HITS = 10, 9  # the reference stops when 9 of the last 10 columns are blank
STAT_BUFFERS = {"latent_mean", "latent_std", "padding_latent", "blank_threshold"}  # set via set_latent_stats


@dataclass
class ReferenceParts:
    """A reference checkpoint mapped onto this framework's modules."""

    kind: str  # "imuru" or "emuru"
    model: Imuru
    vae: LineVAE
    preset: str | None  # name of the conf/model/t5 preset the T5 sizes match, if any


# --- detection and reading -----------------------------------------------------------------------------
def read_config(directory: Path) -> dict[str, Any] | None:
    path = directory / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return config if isinstance(config, dict) else None


def is_reference_checkpoint(directory: str | os.PathLike) -> bool:
    """True for a directory saved by the reference Imuru/Emuru code (not by this framework)."""
    directory = Path(directory)
    config = read_config(directory) if directory.is_dir() else None
    if config is None or "format_version" in config:
        return False
    return str(config.get("model_type", "")).lower() in ("imuru", "emuru") or any(
        k in config for k in REFERENCE_KEYS[:3]
    )


def read_state(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the checkpoint (single or sharded safetensors, else pytorch_model.bin), as float32."""
    index = directory / "model.safetensors.index.json"
    try:
        if (directory / "model.safetensors").is_file():
            state = load_file(str(directory / "model.safetensors"))
        elif index.is_file():
            shards = sorted(set(json.loads(index.read_text("utf-8"))["weight_map"].values()))
            state = {k: v for shard in shards for k, v in load_file(str(directory / shard)).items()}
        elif (directory / "pytorch_model.bin").is_file():
            state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        else:
            raise UserError(
                f"{directory} has no model.safetensors (or sharded safetensors / pytorch_model.bin)."
            )
    except (OSError, SafetensorError, KeyError, ValueError, RuntimeError) as err:
        raise UserError(f"Cannot read the weights in {directory} ({type(err).__name__}: {err}).") from err
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def checkpoint_kind(config: dict[str, Any], state: dict[str, Tensor]) -> str:
    """Imuru configs name a style encoder (Imuru was trained with Emuru's class: model_type is no guide)."""
    if "style_enc" in config or str(config.get("model_type", "")).lower() == "imuru":
        return "imuru"
    return "imuru" if any(k.startswith("style_encoder.") for k in state) else "emuru"


# --- T5 sizes ------------------------------------------------------------------------------------------
def t5_settings_from_state(state: dict[str, Tensor]) -> dict[str, Any]:
    """T5 sizes read from the tensor shapes (the reference config only names a hub T5)."""
    embedding = next((state[k] for k in EMBEDDINGS if k in state), None)
    bias = state.get("T5.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    if embedding is None or bias is None:
        raise UserError(
            "The checkpoint has no T5 embedding or encoder attention bias (T5.shared.weight, ...)."
        )

    def layers(stack: str) -> int:
        found = {int(m.group(1)) for k in state if (m := re.match(rf"T5\.{stack}\.block\.(\d+)\.", k))}
        return max(found) + 1 if found else 0

    heads = int(bias.shape[1])
    gated = "T5.encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state
    wi = state["T5.encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight")]
    return {
        "vocab_size": int(embedding.shape[0]),
        "d_model": int(embedding.shape[1]),
        "num_layers": layers("encoder"),
        "num_decoder_layers": layers("decoder"),
        "num_heads": heads,
        "d_kv": int(state["T5.encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]) // heads,
        "d_ff": int(wi.shape[0]),
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "relative_attention_num_buckets": int(bias.shape[0]),
    }


def t5_presets() -> dict[str, dict[str, Any]]:
    """The framework's T5 presets (conf/model/t5/*.yaml), when the configs are next to the package."""
    roots = [Path(os.environ["IMURU_PL_ROOT"])] if os.environ.get("IMURU_PL_ROOT") else []
    roots.append(Path(__file__).resolve().parents[3])
    for root in roots:
        folder = root / "conf" / "model" / "t5"
        if folder.is_dir():
            from omegaconf import OmegaConf

            return {
                p.stem: dict(OmegaConf.to_container(OmegaConf.load(p))) for p in sorted(folder.glob("*.yaml"))
            }
    return {}


def complete_t5_settings(shapes: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Shape-read sizes plus the remaining settings of the matching preset (else the framework defaults)."""
    for name, preset in t5_presets().items():
        if all(preset.get(k) == shapes[k] for k in T5_SHAPE_KEYS):
            merged = {k: v for k, v in preset.items() if k in T5_DEFAULTS}
            return {**merged, **shapes}, name
    return {**T5_DEFAULTS, **shapes}, None


# --- the mapping -----------------------------------------------------------------------------------------
def map_imuru_weights(state: dict[str, Tensor], d_model: int) -> tuple[dict[str, Tensor], list[str]]:
    """Reference names -> `Imuru` state-dict names; returns the mapped tensors and the unknown names."""
    mapped: dict[str, Tensor] = {}
    unknown: list[str] = []
    embedding = next((k for k in EMBEDDINGS if k in state), None)
    for name, tensor in state.items():
        if name in EMBEDDINGS or name in IGNORED or name.startswith(("vae.", "padding_token")):
            continue
        if name.startswith(("T5.encoder.", "T5.decoder.")):
            mapped[name[3:]] = tensor
        elif name in ("sos.weight", "vae_to_t5.weight", "vae_to_t5.bias"):
            mapped[name] = tensor
        elif name == "t5_to_vae.weight":
            mapped[name] = tensor * d_model**-0.5  # the reference's tied-embedding output scaling
        elif name.startswith("style_encoder."):
            mapped["style_encoder.scorer." + name.removeprefix("style_encoder.")] = tensor
        else:
            unknown.append(name)
    if embedding is not None:
        for other in EMBEDDINGS:
            if other in state and not torch.equal(state[other], state[embedding]):
                unknown.append(other)  # an untied copy this model has no place for
        mapped["encoder.embed_tokens.weight"] = state[embedding]
    return mapped, unknown


def vae_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The `vae.*` tensors without the prefix, old attention names renamed."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("vae."):
            parts = name[4:].split(".")
            if "attentions" in parts and len(parts) >= 2 and parts[-2] in OLD_ATTENTION:
                parts[-2] = OLD_ATTENTION[parts[-2]]
            out[".".join(parts)] = tensor
    return out


def vae_config_from_state(state: dict[str, Tensor], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The reference VAE config with every field the shapes tell read from the shapes."""
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))})
    if "encoder.conv_in.weight" not in state or not blocks:
        raise UserError(
            "The checkpoint has no VAE weights (vae.encoder.*): it is not an Imuru/Emuru checkpoint."
        )
    channels = [int(state[f"encoder.down_blocks.{b}.resnets.0.conv1.weight"].shape[0]) for b in blocks]
    resnets = {
        int(m.group(1)) for k in state if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))
    }
    config = {
        **REFERENCE_VAE,
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "latent_channels": int(state["decoder.conv_in.weight"].shape[1]),
        "block_out_channels": channels,
        "layers_per_block": len(resnets),
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "mid_block_add_attention": any(k.startswith("encoder.mid_block.attentions.") for k in state),
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        **(overrides or {}),
    }
    if any(c % config["norm_num_groups"] for c in channels):
        raise UserError(
            f"The checkpoint's VAE channels {channels} do not divide into "
            f"{config['norm_num_groups']} norm groups; "
            "pass its norm_num_groups in vae_config."
        )
    return config


def _examples(names: list[str]) -> str:
    return ", ".join(sorted(names)[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _mismatch(directory: Path, missing: list[str], unexpected: list[str]) -> UserError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_examples(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    return UserError(
        f"{directory} does not match the Imuru/Emuru reference layout: tensors {'; '.join(parts)}."
    )


# --- public entry points ---------------------------------------------------------------------------------
def load_reference_parts(
    directory: str | os.PathLike, vae_config: dict[str, Any] | None = None
) -> ReferenceParts:
    """Any reference checkpoint (Imuru or Emuru) as an `Imuru` module and a `LineVAE` (both on the CPU).

    For Emuru the module holds Emuru's T5 and adapters with a `full` style prefix: a start for fine-tuning,
    not a model that writes like Emuru.
    """
    directory = Path(directory)
    config = read_config(directory) if directory.is_dir() else None
    if config is None:
        raise UserError(f"{directory} is not a model directory: it has no readable {CONFIG_NAME}.")
    for key in ("slices_per_query", "vae_channels"):
        if int(config.get(key, 1)) != 1:
            raise UserError(
                f"{directory} uses {key}={config[key]}; only 1 (one 8-number column per token) is supported."
            )
    state = read_state(directory)
    kind = checkpoint_kind(config, state)
    style_enc = STYLE_ENCODERS.get(
        str(config.get("style_enc", "full" if kind == "emuru" else "mean")).lower()
    )
    if style_enc is None:
        raise UserError(
            f"{directory} names style_enc={config.get('style_enc')!r}; known: mean, MLP, MLP2, full."
        )
    shapes = t5_settings_from_state(state)
    settings, preset = complete_t5_settings(shapes)
    padding = state.get("padding_token")
    threshold = state.get("padding_token_threshold")
    if padding is None or threshold is None or padding.numel() != LATENT_CHANNELS:
        raise _mismatch(
            directory,
            [
                n
                for n, t in (("padding_token", padding), ("padding_token_threshold", threshold))
                if t is None or t.numel() not in (1, LATENT_CHANNELS)
            ],
            [],
        )
    with torch.device("meta"):  # a t5-large model is built without allocating and initialising it twice
        model = Imuru(t5=settings, style_enc=style_enc, stop_window=STOP_WINDOW, stop_min_hits=STOP_MIN_HITS)
    buffers = dict(model.named_buffers())
    if set(buffers) - STAT_BUFFERS:
        raise RuntimeError(
            f"Imuru has buffers {sorted(set(buffers) - STAT_BUFFERS)} this loader does not fill."
        )
    mapped, unexpected = map_imuru_weights(state, settings["d_model"])
    mapped.update({name: torch.zeros_like(buffer, device="cpu") for name, buffer in buffers.items()})
    vae_tensors = vae_state(state)
    autoencoder = AutoencoderKL(**vae_config_from_state(vae_tensors, vae_config))
    try:
        result = model.load_state_dict(mapped, strict=False, assign=True)
        vae_result = autoencoder.load_state_dict(vae_tensors, strict=False)
    except RuntimeError as err:  # shape mismatches
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise UserError(
            f"{directory} has tensors whose shapes disagree with the rest of it "
            f"({lines[0] if lines else type(err).__name__})."
        ) from err
    missing = list(result.missing_keys) + [f"vae.{k}" for k in vae_result.missing_keys]
    unexpected += list(result.unexpected_keys) + [f"vae.{k}" for k in vae_result.unexpected_keys]
    if missing or unexpected:
        raise _mismatch(directory, missing, unexpected)
    # The reference works on raw latents: mean 0, std 1; its blank column and threshold come with it.
    model.set_latent_stats(0.0, 1.0, padding.reshape(-1), float(threshold.reshape(-1)[0]))
    vae = LineVAE(autoencoder, padding_latent=padding.reshape(-1), stop_threshold=model.stop_threshold)
    log.info(
        "Loaded the reference %s checkpoint %s (T5 %s, d_model %d, %d+%d layers; style_enc %s).",
        kind,
        directory,
        f"preset {preset}" if preset else "sizes from the weights",
        settings["d_model"],
        settings["num_layers"],
        settings["num_decoder_layers"],
        style_enc,
    )
    return ReferenceParts(kind, model.eval(), vae.eval(), preset)


class ModelParts(NamedTuple):
    """A loaded model and its frozen VAE (`ImuruPipeline(*parts)` makes a pipeline of them)."""

    model: Imuru
    vae: LineVAE


def load_reference_model(
    directory: str | os.PathLike, allow_emuru: bool = False, vae_config: dict[str, Any] | None = None
) -> ModelParts:
    """A published Imuru checkpoint directory as its model and VAE (on the CPU); Emuru only with
    `allow_emuru` (its weights as a start for fine-tuning)."""
    parts = load_reference_parts(directory, vae_config)
    if parts.kind == "emuru":
        if not allow_emuru:
            raise _emuru_error(directory)
        log.warning(
            "Starting from Emuru's weights: its T5 learnt other inputs, fine-tuning adapts it to Imuru's."
        )
    return ModelParts(parts.model, parts.vae)


def _emuru_error(directory: str | os.PathLike) -> UserError:
    return UserError(
        f"{directory} is an Emuru checkpoint, which writes after the style image's own columns and needs "
        "that "
        "image's transcription, unlike this generator; load its weights with load_reference_parts (or "
        "fine-tune them with init_from) instead."
    )


def load_model_dir(
    directory: str | os.PathLike, device: str | torch.device = "cpu", allow_emuru: bool = False
) -> ModelParts:
    """An exported imuru-pl model or a reference checkpoint, whichever the directory holds, as its model (in
    eval mode) and its frozen VAE on `device`. A bundled name (`starter`) names the package's own model."""
    directory = resolve(directory)
    if not directory.is_dir():
        raise UserError(f"Model directory not found: {directory}.")
    if is_reference_checkpoint(directory):  # a published Imuru checkpoint (Hugging Face layout)
        model, vae = load_reference_model(directory, allow_emuru)
    elif not (directory / VAE_SUBDIR).is_dir():
        raise UserError(f"{directory} is not an exported imuru-pl model: it has no '{VAE_SUBDIR}/' folder.")
    else:
        model, vae = Imuru.from_pretrained(directory), LineVAE.from_pretrained(directory / VAE_SUBDIR)
    return ModelParts(model.to(device).eval(), vae.freeze().to(device))
