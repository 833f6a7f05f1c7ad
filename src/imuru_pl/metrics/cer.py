"""Corpus character error rate (torchmetrics' CharErrorRate), case-sensitive and case-insensitive."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from torchmetrics.text import CharErrorRate

_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFKC (full-width punctuation from the recogniser becomes ASCII) and single spaces, trimmed."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def cer(predictions: Sequence[str], references: Sequence[str], ignore_case: bool = False) -> float:
    """Edits over reference characters, summed over the corpus (not a mean of per-line rates)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    preds = [normalize(p) for p in predictions]
    refs = [normalize(r) for r in references]
    if ignore_case:
        preds, refs = [p.casefold() for p in preds], [r.casefold() for r in refs]
    if sum(len(r) for r in refs) == 0:
        raise ValueError("CER needs at least one reference character")
    return float(CharErrorRate()(preds, refs))
