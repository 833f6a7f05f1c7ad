"""duration_fit: a width head (a copy of the duration head and its view of the hand) trains on its own data, the
rest of the model frozen, and lines are resampled to its widths (docs/legibility.md)."""

import pytest
import torch
from omegaconf import OmegaConf
from test_imuru_module import TINY_T5, tiny_vae

from imuru_pl.data.datamodule import LineDataModule
from imuru_pl.errors import UserError
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.latents import LatentEncoder
from imuru_pl.models.tokenizer import encode_texts
from imuru_pl.models.writing import planned_line_columns
from imuru_pl.pipeline import resample_width, write_lines_detailed
from imuru_pl.tasks.duration_fit import fit_durations, fit_settings

FONTS = ["fontpkg_caveat", "fontpkg_kalam", "fontpkg_great_vibes"]


def model(**switches) -> Imuru:
    torch.manual_seed(0)
    imuru = Imuru(t5=TINY_T5, trailing_blank_columns=3, max_new_columns=6, letters={"enabled": True}, **switches)
    imuru.use_vae_stats(tiny_vae())
    return imuru


def data() -> LineDataModule:
    return LineDataModule(seed=3, fonts=FONTS, writers_per_font=3, batch_size=6, eval_batch_size=6,
                          lines_per_writer={"train": 6, "val": 4, "test": 2}, words_per_line=(1, 3),
                          max_width=256)


def test_only_the_width_head_moves_and_its_duration_loss_falls():
    imuru = model().train()
    imuru.encoder.requires_grad_(False)  # a flag the stage must give back as it found it
    flags = [p.requires_grad for p in imuru.parameters()]
    before = {name: p.detach().clone() for name, p in imuru.named_parameters()}
    buffers = {name: b.clone() for name, b in imuru.named_buffers()}
    settings = {"steps": 40, "lr": 1e-2, "val_batches": 2, "log_every": 10}
    result = fit_durations(imuru, tiny_vae(), data(), settings)
    assert result["steps"] == 40
    assert result["val_duration_loss_after"] < 0.5 * result["val_duration_loss_before"], result
    fitted = {name for name, _ in imuru.named_parameters()} - before.keys()
    assert fitted and all(name.startswith("letters.width_planner.") for name in fitted)
    for name, p in imuru.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), f"the fit changed {name} of the model as trained"
    assert all(torch.equal(b, buffers[name]) for name, b in imuru.named_buffers())
    assert [p.requires_grad for p in imuru.parameters()][:len(flags)] == flags and imuru.training


def test_a_model_without_a_duration_head_is_refused():
    with pytest.raises(UserError, match="aligned letters"):
        fit_durations(Imuru(t5=TINY_T5), tiny_vae(), data(),
                      {"steps": 1, "lr": 1e-3, "val_batches": 1, "log_every": 1})


def config(**sections):
    cfg = OmegaConf.create({"data": {"batch_size": 4}, **sections})
    OmegaConf.set_struct(cfg, True)  # as run.py composes it: no new keys
    return cfg


def test_settings_are_checked_and_steps_0_is_off():
    assert fit_settings(config(duration_fit={"steps": 0})) is None
    assert fit_settings(config()) is None  # a config from before the stage existed
    on = fit_settings(config(duration_fit={"steps": 5, "data": {"batch_size": 8}}))
    assert on == {"steps": 5, "lr": 1e-3, "val_batches": 8, "log_every": 200}
    for wrong, message in [({"steps": -1}, "duration_fit.steps"), ({"steps": 2.5}, "duration_fit.steps"),
                           ({"steps": 5, "lr": 0}, "duration_fit.lr"),
                           ({"steps": 5, "val_batches": 0}, "val_batches"),
                           ({"steps": 5, "data": {"font_folder": "x"}}, "data.font_folder is not a key")]:
        with pytest.raises(UserError, match=message):
            fit_settings(config(duration_fit=wrong))


def test_a_rate_that_diverges_stops_in_one_sentence_and_leaves_no_width_head():
    imuru = model()
    before = {name: p.detach().clone() for name, p in imuru.named_parameters()}
    with pytest.raises(UserError, match="non-finite at step .* lower duration_fit.lr"):
        fit_durations(imuru, tiny_vae(), data(), {"steps": 20, "lr": 1e30, "val_batches": 1, "log_every": 20})
    assert imuru.letters.width_planner is None
    assert {name for name, _ in imuru.named_parameters()} == before.keys()
    assert all(torch.equal(p, before[name]) for name, p in imuru.named_parameters())
    assert all(p.requires_grad for p in imuru.parameters())


def test_the_lines_are_drawn_at_the_width_heads_widths(tmp_path):
    """The model as trained is untouched (it writes the same columns), a width head copied from its duration
    head is fitted, and each written line is resampled to the width that head plans."""
    imuru, vae = model(), tiny_vae()
    with torch.no_grad():
        imuru.letters.planner.duration_head[-1].bias.fill_(1.2)  # about 2.3 columns per letter: every line gets some
    datamodule = data()
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    texts = ["a few words", "ab", "longer line of text"]
    style, widths = batch.style[:3], batch.style_widths[:3]
    before = {name: p.detach().clone() for name, p in imuru.named_parameters()}
    written = write_lines_detailed(imuru, vae, style, widths, texts, max_new_columns=40)
    style_columns = LatentEncoder(vae).style(style, widths, sample=False)
    assert planned_line_columns(imuru, *encode_texts(texts), *style_columns) is None
    result = fit_durations(imuru, vae, data(), {"steps": 40, "lr": 1e-2, "val_batches": 2, "log_every": 10})
    assert result["val_duration_loss_after"] < 0.75 * result["val_duration_loss_before"], result
    assert imuru.letters.width_planner is not None
    for name, p in imuru.named_parameters():
        if name in before:
            assert torch.equal(p, before[name]), f"the fit changed {name} of the model as trained"
    again = Imuru.from_pretrained(imuru.save_pretrained(tmp_path / "m"))
    assert again.letters.width_planner is not None
    resampled = write_lines_detailed(again, vae, style, widths, texts, max_new_columns=40)
    columns = planned_line_columns(again, *encode_texts(texts), *style_columns)
    assert torch.equal(resampled.lengths, columns.clamp_max(40))
    assert resampled.lengths.tolist() != written.lengths.tolist(), "the width head plans other widths"
    for image, own, n in zip(resampled.images, written.images, resampled.lengths.tolist()):
        torch.testing.assert_close(image, resample_width(own, 8 * n) if n else own)
        assert image.shape[-1] == 8 * max(n, 1)
    assert torch.equal(resampled.stopped, written.stopped)


def test_a_width_head_sums_its_letters_before_rounding_and_a_style_text_scales_only_the_line_width():
    """A hand of 1.4 columns a letter is planned at 1.4 n columns, not n; the style text's scale reaches the
    width each line is resampled to, while the letters are drawn as without it."""
    imuru, vae = model(), tiny_vae()
    with torch.no_grad():
        imuru.letters.planner.duration_head[-1].bias.fill_(1.2)
    datamodule = data()
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    texts = ["a few words", "ab", "longer line of text"]
    style, widths = batch.style[:3], batch.style_widths[:3]
    own = write_lines_detailed(imuru, vae, style, widths, texts, max_new_columns=80)
    planner = imuru.letters.add_width_head()
    with torch.no_grad():
        planner.duration_head[-1].weight.zero_()
        planner.duration_head[-1].bias.fill_(torch.log(torch.tensor(2.4)).item())  # expm1: 1.4 columns
    ids, mask = encode_texts(texts)
    style_cols, style_mask = LatentEncoder(vae).style(style, widths, sample=False)
    assert planned_line_columns(imuru, ids, mask, style_cols, style_mask).tolist() == [15, 3, 27]
    encoded = imuru.encode_text(ids, mask)
    rounded = imuru.letters.letter_widths(imuru.encode_text, encoded, ids, imuru.normalise(style_cols), style_mask,
                                          planner=planner).sum(1)
    assert rounded.tolist() == [11, 2, 19]
    style_texts = ["x"] * 3  # one letter planned at 1.4 columns against a whole style line: scale 2, the cap
    scaled = write_lines_detailed(imuru, vae, style, widths, texts, 80, style_texts)
    assert scaled.lengths.tolist() == [31, 6, 53]
    for image, drawn, n in zip(scaled.images, own.images, scaled.lengths.tolist()):
        torch.testing.assert_close(image, resample_width(drawn, 8 * n))
    assert torch.equal(scaled.stopped, own.stopped)
