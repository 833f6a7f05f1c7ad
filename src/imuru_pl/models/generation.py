"""The pieces of autoregressive generation that do not depend on what the model is trained for.

- `StopRule` / `StopTracker`: per-sample stopping on the padding latent (a blank column) with a
  rolling window, plus the bookkeeping that crops trailing blank columns.
- `CachedDecoder`: one latent column per step through a transformers T5 decoder stack. The prefix
  goes through the stock decoder once, filling a transformers `EncoderDecoderCache`; its keys and
  values then seed preallocated buffers, and every later step runs a lean single-token pass over
  the same modules: no growing concatenations, no mask or position-bias rebuilding, cross-attention
  keys and values computed once.
- `generate_full_recompute`: the reference's loop (everything re-run for every step), for tests and
  benchmarks of the cached one.
- `join_styles` / `pad_latents`: batching helpers for latent sequences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.models.t5.modeling_t5 import T5Stack

from imuru_pl.errors import UserError


@dataclass(frozen=True)
class StopRule:
    """Stop a sample once `min_hits` of its last `window` columns look blank.

    A column looks blank when its cosine similarity to `padding_latent` (the raw VAE latent of a
    white column) exceeds `threshold`; both constants belong to one VAE.
    """

    padding_latent: Tensor  # (C,) raw VAE latent of a blank column
    threshold: float
    window: int = 10
    min_hits: int = 9

    def __post_init__(self) -> None:
        if not 1 <= self.min_hits <= self.window:
            raise UserError(
                f"stop_min_hits must be between 1 and stop_window ({self.window}), got {self.min_hits}."
            )
        if not -1.0 <= float(self.threshold) <= 1.0:
            raise UserError(f"stop_threshold is a cosine similarity in [-1, 1], got {self.threshold}.")

    def is_blank(self, columns: Tensor) -> Tensor:
        """(..., C) raw columns -> (...) bool."""
        pad = self.padding_latent.to(device=columns.device, dtype=columns.dtype)
        return F.cosine_similarity(columns, pad.expand_as(columns), dim=-1) > self.threshold


class StopTracker:
    """Writes generated columns into a preallocated buffer and decides, per sample, when to stop.

    The `rule` (padding-latent similarity over a window) ends a sample; without one every sample runs to
    `max_columns`. Rows of finished samples are never written again. The work per step does not grow with the number of
    generated columns: the stop check reads a ring buffer of the last `window` blank flags.
    """

    def __init__(self, batch: int, max_columns: int, channels: int, rule: StopRule | None, like: Tensor):
        self.rule = rule
        self.max_columns = max_columns
        fill = torch.zeros(channels) if rule is None else rule.padding_latent
        self.columns = fill.to(like).expand(batch, max_columns, channels).clone()
        self.active = torch.ones(batch, dtype=torch.bool, device=like.device)
        self.last_ink = torch.full((batch,), -1, dtype=torch.long, device=like.device)
        self.steps = 0
        if rule is not None:
            self.recent_blank = torch.zeros(batch, rule.window, dtype=torch.bool, device=like.device)

    def update(self, column: Tensor) -> None:
        """Record the raw column (B, C) generated at the current step."""
        step = self.steps
        writing = self.active
        self.columns[:, step] = torch.where(writing.unsqueeze(-1), column, self.columns[:, step])
        if self.rule is not None:
            blank = self.rule.is_blank(column)
            self.last_ink = torch.where(writing & ~blank, step, self.last_ink)
            self.recent_blank[:, step % self.rule.window] = blank
            done = self.recent_blank.sum(1) >= self.rule.min_hits
            self.active = self.active & ~done
        self.steps = step + 1

    def all_done(self) -> bool:
        return self.steps >= self.max_columns or not bool(self.active.any())

    def stopped(self) -> Tensor:
        """(B,) bool: the samples that ended by themselves before the column cap."""
        return ~self.active

    def result(self) -> tuple[Tensor, Tensor]:
        """Columns (B, n, C) cropped after each sample's last non-blank column, and lengths (B,)."""
        if self.rule is None:
            lengths = torch.full_like(self.last_ink, self.steps)
            return self.columns[:, : self.steps], lengths
        lengths = self.last_ink + 1
        width = int(lengths.max())
        columns = self.columns[:, :width].clone()
        beyond = torch.arange(width, device=columns.device)[None, :] >= lengths[:, None]
        columns[beyond] = self.rule.padding_latent.to(columns)
        return columns, lengths


class CachedDecoder:
    """Incremental decoding through a T5 decoder stack for one batch of requests.

    `prefill` runs the stock transformers decoder once over the whole prefix with a KV cache, then
    `step` adds one token at a time. The position bias of every distance and the additive masks are
    built once, so a step is only the per-layer matrix products and two attention calls.
    """

    def __init__(self, decoder: T5Stack, encoder_states: Tensor, encoder_mask: Tensor, self_mask: Tensor):
        """`self_mask` (B, T) bool covers every decoder position this run will ever hold."""
        self.decoder = decoder
        self.encoder_states = encoder_states
        self.encoder_mask = encoder_mask
        self.self_mask = self_mask
        batch, self.capacity = self_mask.shape
        config = decoder.config
        self.heads, self.head_dim = config.num_heads, config.d_kv
        dtype, device = encoder_states.dtype, encoder_states.device
        neg = torch.finfo(dtype).min
        # Additive masks: 0 where attention is allowed, the most negative number where it is not.
        self.key_bias = torch.zeros(batch, 1, 1, self.capacity, dtype=dtype, device=device)
        self.key_bias.masked_fill_(~self_mask[:, None, None, :], neg)
        self.cross_bias = torch.zeros(batch, 1, 1, encoder_mask.shape[1], dtype=dtype, device=device)
        self.cross_bias.masked_fill_(~encoder_mask[:, None, None, :], neg)
        # Bias for query position T-1 against keys 0..T-1 holds every distance T-1..0 in order, so
        # the bias row of any query t is its last t+1 entries.
        first = decoder.block[0].layer[0].SelfAttention
        self.distance_bias = first.compute_bias(
            1, self.capacity, device=device, past_seen_tokens=self.capacity - 1
        )
        self.distance_bias = self.distance_bias.to(dtype)  # (1, H, 1, T)
        shape = (batch, self.heads, self.capacity, self.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in decoder.block]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in decoder.block]
        self.cross_keys: list[Tensor] = []
        self.cross_values: list[Tensor] = []
        self.length = 0

    def prefill(self, embeds: Tensor) -> Tensor:
        """Run the prefix (B, p, d) in one call; returns the last position's hidden state (B, 1, d)."""
        length = embeds.shape[1]
        if length > self.capacity:
            raise ValueError(f"a prefix of {length} tokens does not fit a decoder of capacity {self.capacity}")
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=self.self_mask[:, :length],
            encoder_hidden_states=self.encoder_states,
            encoder_attention_mask=self.encoder_mask,
            cache=cache,
            use_cache=True,
        )
        for index in range(len(self.decoder.block)):
            self_layer = cache.self_attention_cache.layers[index]
            self.keys[index][:, :, :length] = self_layer.keys
            self.values[index][:, :, :length] = self_layer.values
            cross_layer = cache.cross_attention_cache.layers[index]
            self.cross_keys.append(cross_layer.keys)
            self.cross_values.append(cross_layer.values)
        self.length = length
        return out.last_hidden_state[:, -1:]

    def step(self, embeds: Tensor) -> Tensor:
        """Append one token (B, 1, d); returns its hidden state (B, 1, d)."""
        pos = self.length
        if pos >= self.capacity:
            raise ValueError(f"decoder capacity {self.capacity} exceeded")
        end = pos + 1
        batch = embeds.shape[0]
        self_bias = self.key_bias[..., :end] + self.distance_bias[..., self.capacity - end :]
        hidden = embeds
        for index, block in enumerate(self.decoder.block):
            self_layer, cross_layer, ff_layer = block.layer[0], block.layer[1], block.layer[-1]
            attn = self_layer.SelfAttention
            normed = self_layer.layer_norm(hidden)
            self.keys[index][:, :, pos : pos + 1] = self._heads(attn.k(normed), batch)
            self.values[index][:, :, pos : pos + 1] = self._heads(attn.v(normed), batch)
            context = F.scaled_dot_product_attention(
                self._heads(attn.q(normed), batch),
                self.keys[index][:, :, :end],
                self.values[index][:, :, :end],
                attn_mask=self_bias,
                scale=1.0,  # T5 does not scale the query-key product
            )
            hidden = hidden + attn.o(self._merge(context, batch))

            attn = cross_layer.EncDecAttention
            normed = cross_layer.layer_norm(hidden)
            context = F.scaled_dot_product_attention(
                self._heads(attn.q(normed), batch),
                self.cross_keys[index],
                self.cross_values[index],
                attn_mask=self.cross_bias,
                scale=1.0,
            )
            hidden = hidden + attn.o(self._merge(context, batch))
            hidden = ff_layer(hidden)
        self.length = end
        return self.decoder.final_layer_norm(hidden)

    def _heads(self, x: Tensor, batch: int) -> Tensor:
        return x.view(batch, 1, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: Tensor, batch: int) -> Tensor:
        return x.transpose(1, 2).reshape(batch, 1, self.heads * self.head_dim)


def join_styles(styles: Sequence[Tensor]) -> Tensor:
    """Several style latent sequences (m_i, C) of one writer -> one sequence (sum m_i, C).

    Concatenated columns form one longer prefix (`full`) or one pool (`mean`, `mlp`, `mlp2`).
    """
    if len(styles) == 0:
        raise UserError("At least one style image is needed.")
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in styles], dim=0)


def pad_latents(sequences: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Latent sequences (m_i, C) -> right-padded batch (B, m, C) and mask (B, m) bool."""
    if len(sequences) == 0:
        raise UserError("At least one latent sequence is needed.")
    width = max(s.shape[0] for s in sequences)
    first = sequences[0]
    batch = first.new_zeros(len(sequences), width, first.shape[-1])
    mask = torch.zeros(len(sequences), width, dtype=torch.bool, device=first.device)
    for row, seq in enumerate(sequences):
        batch[row, : seq.shape[0]] = seq
        mask[row, : seq.shape[0]] = True
    return batch, mask


@torch.inference_mode()
def generate_full_recompute(model, text_ids: Tensor, text_mask: Tensor, style: Tensor, style_mask: Tensor,
                            max_new_columns: int | None = None, stop="model",
                            style_text: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """The reference loop for an `Imuru` `model`: encoder and whole decoder re-run for every decoder step,
    no cache. Same inputs, outputs and stopping as `Imuru.generate`."""
    steps, rule = model._generation_setup(style_mask, max_new_columns, stop)
    r, channels = model.reduction_factor, style.shape[-1]
    with model._eval_mode():
        batch = text_ids.shape[0]
        plan = model.letter_plan(model.encode_text(text_ids, text_mask), text_ids, text_mask, style,
                                 style_mask, steps, style_text)
        decoder_steps = plan.steps if plan is not None else -(-steps // r)
        tracker = StopTracker(batch, decoder_steps * r, channels, None if plan is not None else rule, like=style)
        written = style.new_zeros(batch, 0, r * channels)  # normalised groups of r columns
        for step in range(decoder_steps):
            encoded = model.encode_text(text_ids, text_mask)
            prefix, prefix_mask = model.style_prefix(style, style_mask)
            columns = torch.cat([model._sos(batch), model.embed_columns(written)], dim=1)
            if plan is not None:
                columns = columns + plan.inputs[:, : step + 1]
            mask = torch.cat([prefix_mask, prefix_mask.new_ones(batch, written.shape[1] + 1)], dim=1)
            hidden = model.decoder(inputs_embeds=torch.cat([prefix, columns], dim=1), attention_mask=mask,
                                   encoder_hidden_states=encoded, encoder_attention_mask=text_mask.bool(),
                                   use_cache=False).last_hidden_state[:, -1:]
            group = model.t5_to_vae(hidden)
            model._track(tracker, group)
            if tracker.all_done():
                break
            written = torch.cat([written, group], dim=1)
        columns, lengths, _ = model._finish(tracker, plan, steps)
        return columns, lengths
