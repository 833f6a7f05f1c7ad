"""Aligned letters: the renderer's letter starts, the column-to-letter map, the duration plan
(docs/legibility.md)."""

import numpy as np
import pytest
import torch

from imuru_pl.data.batch import collate_lines
from imuru_pl.data.synthetic import SyntheticHandwriting
from imuru_pl.errors import UserError
from imuru_pl.models.alignment import column_letters, durations_to_letters, letter_durations, letter_phase
from imuru_pl.models.generation import pad_latents
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.tokenizer import encode_texts

TINY_T5 = {"d_model": 32, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16, "d_ff": 64}
PAD = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0])
TEXTS = ["ab cd", "héllo", "xyz"]
STARTS = [torch.tensor([4.0, 20, 36, 44, 60]), torch.tensor([0.0, 10, 26, 30, 34]),
          torch.tensor([4.0, 12, 24])]
LENGTHS = (9, 6, 5)
FONTS = ["fontpkg_caveat", "fontpkg_great_vibes", "fontpkg_kalam", "fontpkg_zeyada"]


def test_letter_starts_follow_the_ink_of_every_letter():
    data = SyntheticHandwriting(seed=7, fonts=FONTS, writers_per_font=2, val_fonts=1, test_fonts=1)
    letters = inked = 0
    ink_per_px = {"space": [0.0, 0.0], "letter": [0.0, 0.0]}  # ink, px
    for writer in [w for split in data.writers.values() for w in split]:
        for index in range(3):
            line = data.line(writer, index)
            starts, width = line.starts, line.mask.shape[1]
            assert len(starts) == len(line.text) and np.all(np.diff(starts) >= 0)
            assert 0 <= starts[0] < 16 and starts[-1] < width
            ink = line.mask.astype(float).sum(axis=0)
            for char, a, b in zip(line.text, starts, [*starts[1:], width]):
                span = ink[int(a):max(int(np.ceil(b)), int(a) + 1)]
                kind = ink_per_px["space" if char == " " else "letter"]
                kind[0], kind[1] = kind[0] + span.sum(), kind[1] + len(span)
                if char != " ":
                    letters, inked = letters + 1, inked + (span.sum() > 0)
    assert inked / letters > 0.97, f"only {inked} of {letters} letters have ink in their span"
    space, letter = (ink / px for ink, px in ink_per_px.values())
    assert space < 0.5 * letter, "word gaps hold much less ink than letters (slanted swashes aside)"


def test_columns_map_to_the_first_byte_of_their_letter_and_blanks_to_eos():
    index = column_letters(STARTS, TEXTS, torch.tensor(LENGTHS), 10)
    assert index[0].tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]  # column centres 4, 12, ...; EOS (5) after 9
    assert index[1].tolist() == [0, 1, 1, 3, 5, 5, 6, 6, 6, 6]  # 'é' is bytes 1-2; EOS is byte 6
    assert index[2].tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 3, 3]
    with pytest.raises(UserError, match="letter starts"):
        column_letters([STARTS[0][:3]], TEXTS[:1], torch.tensor([9]), 10)


def test_durations_phase_and_plan_agree():
    index = column_letters(STARTS[:1], TEXTS[:1], torch.tensor([9]), 12)
    assert letter_durations(index, 6)[0].tolist() == [2, 2, 1, 2, 2, 3]
    phase = letter_phase(index, 6, torch.tensor([5]))
    assert torch.allclose(phase[0, :4, 0], torch.tensor([0.25, 0.75, 0.25, 0.75]))
    assert torch.allclose(phase[0, 9:, 0], torch.tensor([0.05, 0.15, 0.25])), "blanks: one 10-column letter"
    ids, mask = encode_texts(TEXTS[:1])
    planned = durations_to_letters(torch.tensor([[2, 2, 1, 2, 2, 0]]), mask, 12)
    assert torch.equal(planned, index), "the renderer's widths, planned, give the renderer's map back"


def tiny_model(step_letters: str = "mean", **kwargs) -> Imuru:
    torch.manual_seed(0)
    return Imuru(t5=TINY_T5, padding_latent=PAD, stop_threshold=0.5, trailing_blank_columns=4,
                 letters={"enabled": True, "step_letters": step_letters}, positions=True, **kwargs)


def durations(model: Imuru, encoded, style, style_mask):
    """The duration head's log(1 + columns) per text token for these style columns."""
    planner = model.letters.planner
    return planner.log_durations(encoded, planner.summary(model.normalise(style), style_mask))


def planned_widths(model: Imuru, encoded, ids, style, style_mask, style_text=None):
    return model.letters.letter_widths(model.encode_text, encoded, ids, model.normalise(style), style_mask,
                                       style_text)


def training_batch(model: Imuru):
    gen = torch.Generator().manual_seed(1)
    ids, text_mask = encode_texts(TEXTS)
    style, style_mask = pad_latents([torch.randn(w, 8, generator=gen) for w in (6, 11, 3)])
    lengths = torch.tensor(LENGTHS)
    target = torch.randn(3, max(LENGTHS), 8, generator=gen)
    target[torch.arange(max(LENGTHS))[None, :] >= lengths[:, None]] = PAD
    target, target_mask = model.pad_target(target, lengths)
    letters = column_letters(STARTS, TEXTS, lengths, target.shape[1])
    return ids, text_mask, style, style_mask, target, target_mask, letters


@pytest.mark.parametrize("r,step_letters", [(1, "mean"), (2, "mean"), (2, "columns")])
def test_aligned_letters_train_every_parameter_with_a_duration_loss(r, step_letters):
    model = tiny_model(reduction_factor=r, step_letters=step_letters).train()
    out = model(*training_batch(model))
    assert set(out.losses) == {"mse", "duration"}
    torch.testing.assert_close(out.loss, out.losses["mse"] + out.losses["duration"])
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    with pytest.raises(UserError, match="model.letters needs the letter"):
        model(*training_batch(model)[:6])


@pytest.mark.parametrize("r,step_letters", [(1, "mean"), (2, "mean"), (2, "columns")])
def test_aligned_prediction_is_the_same_alone_or_in_a_padded_batch(r, step_letters):
    model = tiny_model(reduction_factor=r, step_letters=step_letters).eval()
    ids, text_mask, style, style_mask, target, target_mask, letters = training_batch(model)
    with torch.no_grad():
        together = model(ids, text_mask, style, style_mask, target, target_mask, letters).prediction
        for i, n in enumerate(LENGTHS):
            t, s, w = int(text_mask[i].sum()), int(style_mask[i].sum()), -(-(n + 4) // r) * r
            own_mask = model.target_mask(torch.tensor([n]), w)
            alone = model(ids[i:i + 1, :t], text_mask[i:i + 1, :t], style[i:i + 1, :s],
                          style_mask[i:i + 1, :s],
                          target[i:i + 1, :w], own_mask, letters[i:i + 1, :w])
            torch.testing.assert_close(together[i, :w], alone.prediction[0], atol=1e-5, rtol=0)
        batched = durations(model, model.encode_text(ids, text_mask), style, style_mask)
        for i in range(3):
            t, s = int(text_mask[i].sum()), int(style_mask[i].sum())
            encoded = model.encode_text(ids[i:i + 1, :t], text_mask[i:i + 1, :t])
            own = durations(model, encoded, style[i:i + 1, :s], style_mask[i:i + 1, :s])
            torch.testing.assert_close(batched[i, :t], own[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("r,step_letters", [(1, "mean"), (2, "mean"), (3, "mean"), (3, "columns")])
def test_planned_generation_cached_equals_full_recompute_and_ends_at_the_plan(r, step_letters):
    model = tiny_model(reduction_factor=r, step_letters=step_letters).eval()
    with torch.no_grad():
        model.letters.planner.duration_head[-1].bias.fill_(1.2)  # about 2.3 columns per letter
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    cached, lengths, stopped = model.generate(ids, text_mask, style, style_mask, max_new_columns=50,
                                              return_stopped=True)
    full, full_lengths = model.generate_full_recompute(ids, text_mask, style, style_mask, max_new_columns=50)
    planned = planned_widths(model, model.encode_text(ids, text_mask), ids, style, style_mask).sum(1)
    assert lengths.tolist() == full_lengths.tolist() == planned.tolist() and bool(stopped.all())
    assert all(n > 0 for n in planned.tolist())
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    past = torch.arange(cached.shape[1])[None, :] >= lengths[:, None]
    assert torch.equal(cached[past], PAD.expand(int(past.sum()), 8)), "past a line's end: the padding latent"
    short, short_lengths, short_stopped = model.generate(ids, text_mask, style, style_mask, max_new_columns=4,
                                                         return_stopped=True)
    assert short.shape[1] == 4 and torch.equal(short_lengths, planned.clamp_max(4))
    assert torch.equal(short_stopped, planned <= 4), "a line cut at the cap did not stop by itself"
    assert not bool(short_stopped.all())


def test_a_style_text_scales_the_plan_to_the_hands_measured_width():
    """The plan for the style line's own text against its measured columns: a hand that writes twice as wide
    as the head predicts gets letters twice as wide; an empty style text leaves the plan alone."""
    model = tiny_model(reduction_factor=2).eval()
    with torch.no_grad():
        model.letters.planner.duration_head[-1].bias.fill_(1.2)  # about 2.3 columns per letter
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    style_texts = ["ab", "some words", ""]  # 3 letters planned for 6 columns, 10 for 11, none
    style_ids, style_text_mask = encode_texts(style_texts)
    encoded = model.encode_text(ids, text_mask)
    planner = model.letters.planner
    with torch.no_grad():
        summary = planner.summary(model.normalise(style), style_mask)
        own = planner.columns(model.encode_text(style_ids, style_text_mask), style_ids, summary).sum(1)
        raw = planner.columns(encoded, ids, summary)
        scale = model.letters.width_scale(model.encode_text, planner, summary, style_mask, style_ids,
                                          style_text_mask)
    expected = (style_mask.sum(1) / own).clamp(0.5, 2.0)
    assert torch.allclose(scale[:2], expected[:2]) and scale[2] == 1.0
    assert not torch.allclose(scale[:2], torch.ones(2)), "these hands are not the head's guess"
    scaled = planned_widths(model, encoded, ids, style, style_mask, (style_ids, style_text_mask))
    assert torch.equal(scaled, (raw * scale[:, None]).round().long())
    assert torch.equal(scaled[2], planned_widths(model, encoded, ids, style, style_mask)[2])
    cached, lengths = model.generate(ids, text_mask, style, style_mask, max_new_columns=80,
                                     style_text=(style_ids, style_text_mask))
    full, full_lengths = model.generate_full_recompute(ids, text_mask, style, style_mask, max_new_columns=80,
                                                       style_text=(style_ids, style_text_mask))
    assert lengths.tolist() == full_lengths.tolist() == scaled.sum(1).tolist()
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=0)
    plain = Imuru(t5=TINY_T5, padding_latent=PAD, stop_threshold=0.5, trailing_blank_columns=4).eval()
    with pytest.raises(UserError, match="plans none"):
        plain.generate(ids, text_mask, style, style_mask, max_new_columns=8, style_text=(style_ids, style_text_mask))


def test_export_keeps_the_switch_and_the_generations(tmp_path):
    model = tiny_model(reduction_factor=2).eval()
    ids, text_mask, style, style_mask, *_ = training_batch(model)
    again = Imuru.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.letters is not None and again.letters.duration_loss_weight == 1.0
    first = model.generate(ids, text_mask, style, style_mask, max_new_columns=30)
    second = again.generate(ids, text_mask, style, style_mask, max_new_columns=30)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_step_letters_columns_starts_as_the_mean_and_tells_which_column_draws_which_letter(tmp_path):
    """`step_letters="columns"`: a step's letter input is projected from its r columns in order. It starts
    equal to the mean of the r inputs (the default), but after training it can tell "a then b" from "b then a",
    which the mean cannot."""
    mean, columns = tiny_model(reduction_factor=2), tiny_model(reduction_factor=2, step_letters="columns")
    columns.load_state_dict(mean.state_dict(), strict=False)  # the same weights, plus the step projection
    ids, text_mask, *_ = training_batch(mean)
    encoded = mean.encode_text(ids, text_mask).detach()
    letters = torch.tensor([[0, 1, 2, 2], [1, 2, 3, 3], [0, 1, 2, 2]])
    swapped = torch.tensor([[1, 0, 2, 2], [2, 1, 3, 3], [1, 0, 2, 2]])  # the first step's letters swapped
    torch.testing.assert_close(columns.letters.step_inputs(encoded, letters, text_mask),
                               mean.letters.step_inputs(encoded, letters, text_mask))
    with torch.no_grad():
        columns.letters.step_letters_proj.weight[:, :32].mul_(3.0)  # the first column weighs more
        apart = (columns.letters.step_inputs(encoded, letters, text_mask)
                 - columns.letters.step_inputs(encoded, swapped, text_mask)).abs().amax(-1)
        same = (mean.letters.step_inputs(encoded, letters, text_mask)
                - mean.letters.step_inputs(encoded, swapped, text_mask)).abs().amax(-1)
    assert bool((apart[:, 0] > 1e-3).all()), "the order of a step's two letters changed nothing"
    assert float(same.max()) < 1e-5, "the mean cannot tell the order"
    assert float(apart[:, 1].max()) < 1e-5, "the second step is the same letter twice in both"
    again = Imuru.from_pretrained(columns.save_pretrained(tmp_path / "m"))
    assert again.letters.step_letters == "columns"
    torch.testing.assert_close(again.letters.step_inputs(encoded, letters, text_mask),
                               columns.letters.step_inputs(encoded, letters, text_mask))
    assert tiny_model(reduction_factor=1, step_letters="columns").letters.step_letters_proj is None
    with pytest.raises(UserError, match="step_letters must be one of"):
        tiny_model(reduction_factor=2, step_letters="sum")
    off = Imuru(t5=TINY_T5, padding_latent=PAD, reduction_factor=2,
                letters={"enabled": False, "step_letters": "columns"})
    assert off.letters is None, "enabled: false switches the whole block off"


def test_batches_carry_letter_starts_only_when_every_sample_has_them():
    sample = dict(style=torch.ones(3, 64, 16), target=torch.ones(1, 64, 16), text="ab", writer="w",
                  style_text="s", style_key="k/s", target_key="k/t")
    assert collate_lines([sample]).target_starts is None
    with_starts = collate_lines([{**sample, "target_starts": torch.tensor([4.0, 8.0])}])
    assert with_starts.target_starts[0].tolist() == [4, 8]
