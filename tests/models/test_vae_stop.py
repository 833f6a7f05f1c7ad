"""Stop constants: the padding latent and threshold tell blank from inked columns of an unseen line."""

from __future__ import annotations

import pytest
import torch
from test_vae_lines import TEXTS, line_batch, render_line, trained_vae

from imuru_pl.data.batch import collate_lines
from imuru_pl.models.vae import BORDER_COLUMNS, WHITE_LEVEL, LineVAE, best_threshold


def test_best_threshold_separates_two_groups():
    blank = torch.tensor([0.80, 0.85, 0.90, 0.95])
    ink = torch.tensor([-0.2, 0.1, 0.3, 0.6])
    threshold, blank_acc, ink_acc = best_threshold(blank, ink)
    assert 0.6 < threshold < 0.8
    assert blank_acc == ink_acc == 1.0


def test_best_threshold_balances_overlapping_groups():
    blank = torch.tensor([0.3, 0.8, 0.85, 0.9])
    ink = torch.tensor([0.0, 0.1, 0.2, 0.4, 0.5, 0.95])
    threshold, blank_acc, ink_acc = best_threshold(blank, ink)
    assert threshold == pytest.approx(0.65)  # midway between the neighbours 0.5 and 0.8
    assert blank_acc == 0.75 and ink_acc == pytest.approx(5 / 6)


@pytest.fixture(scope="module")
def vae() -> LineVAE:
    vae = trained_vae()
    report = vae.measure_stop_constants(
        [line_batch(TEXTS[:4]), line_batch(TEXTS[4:])], blank_widths=(128, 256)
    )
    assert report.lines == len(TEXTS)
    assert report.blank_columns > 0 and report.ink_columns > 0
    return vae


def test_paper_after_a_line_is_the_padding_latent(vae):
    """White columns after a written line, away from its last stroke and the image edge, are the padding."""
    sample = render_line("after this", right=160)
    columns = vae.encode(collate_lines([sample]).target, sample=False)
    ink_end = int((sample["target"][0] < WHITE_LEVEL).any(dim=0).nonzero().max()) // 8
    settled = columns[:, ink_end + 1 + BORDER_COLUMNS : -BORDER_COLUMNS]
    assert settled.shape[1] >= 8
    assert vae.column_similarity(settled).min() > 0.98
    assert vae.is_blank(settled).all()
    assert vae.measurement["padding_min_similarity"] > 0.98


def test_constants_classify_an_unseen_line(vae):
    sample = render_line("unseen words", left=48, right=96)
    batch = collate_lines([sample])
    columns = vae.encode(batch.target, sample=False)[0]
    blank_pred = vae.is_blank(columns[None])[0]
    ink_px = (batch.target[0, 0] < WHITE_LEVEL).sum(dim=0).view(-1, 8).sum(dim=1)  # inked px per column
    inked = ink_px > 0
    # Blank columns at least two columns away from any ink (the encoder sees a few px around each column).
    near_ink = torch.nn.functional.max_pool1d(inked.float()[None, None], 5, stride=1, padding=2)[0, 0] > 0
    clear = ~near_ink
    assert clear.sum() >= 10 and inked.sum() >= 10
    assert blank_pred[clear].all(), blank_pred[clear]
    assert not blank_pred[ink_px >= 20].any(), blank_pred[ink_px >= 20]


def test_measured_statistics_describe_real_columns(vae):
    columns = vae.encode(line_batch(TEXTS[:4]).target, sample=False)
    assert vae.latent_mean.shape == vae.latent_std.shape == (8,)
    assert (vae.latent_std > 0).all()
    normalised = (columns - vae.latent_mean) / vae.latent_std
    assert normalised.abs().mean() < 3
