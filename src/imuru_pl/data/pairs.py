"""Style/target pairs of one split as `LineSample` dicts, composed from the split's pre-rendered ink masks.

`other_line`: each line is a target once; its style is another line of the same writer with different text
(Imuru's training pairs). `same_line`: the style is the paper render and the target the clean render of the
SAME line, pixel-aligned (what a VAE learns paper -> clean from). Partners are fixed by the seed, so a split
gives the same samples every epoch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from imuru_pl.data.batch import LineSample
from imuru_pl.data.compose import clean, on_paper, to_tensor
from imuru_pl.data.store import LineStore
from imuru_pl.data.synthetic import Writer, paper_seed, stable_seed
from imuru_pl.errors import UserError

Pairing = Literal["other_line", "same_line"]
PAIRINGS = ("other_line", "same_line")


class LinePairs(Dataset):
    """`LineSample` items of one split: line i is the target, its partner (or itself) the style."""

    def __init__(self, store: LineStore, writers: list[Writer], pairing: Pairing, seed: int):
        if pairing not in PAIRINGS:
            raise UserError(f"data.pairing must be one of {', '.join(PAIRINGS)}; got {pairing!r}.")
        self.store, self.pairing = store, pairing
        self.writers = {w.id: w for w in writers}
        self.partners = np.arange(len(store)) if pairing == "same_line" else style_partners(store, seed)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def texts(self) -> list[str]:
        """The target text of every item, in order."""
        return self.store.texts

    @property
    def pixel_widths(self) -> np.ndarray:
        """(N, 2) px width of every item's style image and target."""
        widths = self.store.widths()
        return np.stack([widths[self.partners], widths], axis=1)

    def __getitem__(self, i: int) -> LineSample:
        store, j = self.store, int(self.partners[i])
        writer = self.writers[store.writer_ids[i]]
        style_key = store.keys[j]
        paper = on_paper(store.mask(j), writer.style, np.random.default_rng(paper_seed(style_key)))
        return LineSample(
            style=to_tensor(paper),
            target=to_tensor(clean(store.mask(i), writer.style)),
            text=store.texts[i],
            writer=writer.id,
            style_text=store.texts[j],
            style_key=f"{style_key}/paper",
            target_key=f"{store.keys[i]}/clean",
            target_starts=torch.from_numpy(store.letter_starts(i).copy()),
        )


def style_partners(store: LineStore, seed: int) -> np.ndarray:
    """For each line, another line of the same writer with a different text (fixed by the seed)."""
    partners = np.empty(len(store), dtype=np.int64)
    by_writer: dict[str, list[int]] = {}
    for i, writer_id in enumerate(store.writer_ids):
        by_writer.setdefault(writer_id, []).append(i)
    for writer_id, rows in by_writer.items():
        n = len(rows)
        rng = np.random.default_rng(stable_seed(seed, "pairs", writer_id))
        for position, row in enumerate(rows):
            start = int(rng.integers(1, n)) if n > 1 else 0
            for step in range(n - 1):
                other = rows[(position + 1 + (start - 1 + step) % (n - 1)) % n]  # never the line itself
                if store.texts[other] != store.texts[row]:
                    partners[row] = other
                    break
            else:
                raise UserError(
                    f"Writer {writer_id} has no two lines with different texts; raise "
                    "data.lines_per_writer (pairing other_line needs at least 2)."
                )
    return partners
