"""A folder of line images in the HWD layout, for training, fine-tuning and evaluation.

    <root>/<writer>/<image>.png   (any image format PIL reads)
    <root>/transcriptions.json    {"<writer>/<image>.png": "the text of that line", ...}

`transcriptions.json` is the index: an image it does not list has no text and is left out, an entry whose
image is missing is counted. Splits: `writers` draws whole writers for validation and test (at least 3
writers); `all_train` keeps every writer in training and holds back a few lines of each writer for
validation and test (both use the same held-back lines) - the way to fine-tune on your own hand.
"""

from __future__ import annotations

import logging

import numpy as np

from imuru_pl.data.real import (
    LineRecord,
    LineTable,
    RealLineDataModule,
    SkipCounter,
    SplitPlan,
    normalize_text,
    split_writers,
)
from imuru_pl.data.synthetic import stable_seed
from imuru_pl.data.transcriptions import IMAGE_SUFFIXES, TRANSCRIPTIONS, read_transcriptions
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

FOLDER_SPLITS = ("writers", "all_train")
MIN_LINES_TO_HOLD_BACK = 3  # a writer keeps at least two lines (two texts) for training and style


class FolderDataModule(RealLineDataModule):
    """Line images of one or more writers (`data=folder data.root=<folder>`)."""

    dataset_name = "Line folder"
    root_help = "the folder of line images (<writer>/<image> and transcriptions.json)"

    def __init__(
        self,
        root: str | None = None,
        split: str = "writers",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        holdout_fraction: float = 0.1,
        **common,
    ):
        super().__init__(root, **common)
        if not (self.root / TRANSCRIPTIONS).is_file():
            raise UserError(
                f"{self.root} has no {TRANSCRIPTIONS} (a JSON object: '<writer>/<image>' -> its text)."
            )
        if split not in FOLDER_SPLITS:
            raise UserError(f"data.split must be one of {', '.join(FOLDER_SPLITS)}; got {split!r}.")
        if not 0 < float(holdout_fraction) < 1:
            raise UserError(
                f"data.holdout_fraction must be between 0 and 1 (exclusive); got {holdout_fraction}."
            )
        self.split = split
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.holdout_fraction = float(holdout_fraction)

    def read_index(self, skipped: SkipCounter) -> list[LineRecord]:
        transcriptions = read_transcriptions(self.root)
        records = []
        for rel, text in sorted(transcriptions.items()):
            parts = rel.split("/")
            if len(parts) != 2 or parts[0] in ("", ".", ".."):
                skipped.add(f"{TRANSCRIPTIONS} entries not of the form <writer>/<image>", rel)
                continue
            text = normalize_text(text)
            if not text:
                skipped.add("lines with an empty transcription", rel)
                continue
            records.append(LineRecord(self.root / rel, text, parts[0], f"folder/{rel}"))
        listed = set(transcriptions)
        for writer_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for image in sorted(writer_dir.iterdir()):
                rel = f"{writer_dir.name}/{image.name}"
                if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES and rel not in listed:
                    skipped.add(f"images with no text in {TRANSCRIPTIONS}", rel)
        return records

    def plan_splits(self, table: LineTable) -> SplitPlan:
        if self.split == "writers":
            if len(set(table.writer_ids)) < 3:
                raise UserError(
                    f"{self.label} has {len(set(table.writer_ids))} writer(s): data.split=writers needs "
                    "at least 3; "
                    "use data.split=all_train to hold back lines of the same writers instead."
                )
            assignment = split_writers(
                table.writer_ids, self.val_fraction, self.test_fraction, self.seed, self.label
            )
            return SplitPlan(table, [(assignment[r.writer],) for r in table.records])
        split_of: list[tuple[str, ...]] = [("train",)] * len(table)
        by_writer: dict[str, list[int]] = {}
        for row, record in enumerate(table.records):
            by_writer.setdefault(record.writer, []).append(row)
        for writer, rows in by_writer.items():
            if len(rows) < MIN_LINES_TO_HOLD_BACK:
                continue
            count = min(len(rows) - 2, max(1, round(self.holdout_fraction * len(rows))))
            rng = np.random.default_rng(stable_seed(self.seed, "holdout", writer))
            for row in rng.choice(rows, size=count, replace=False):
                split_of[int(row)] = ("val", "test")
        held = sum(1 for s in split_of if s != ("train",))
        log.info(
            "%s: every writer trains; %d held-back lines are used for validation and test.", self.label, held
        )
        if not held:
            raise UserError(
                f"{self.label}: data.split=all_train holds back lines of writers with at least "
                f"{MIN_LINES_TO_HOLD_BACK} lines, and no writer has that many."
            )
        return SplitPlan(table, split_of, styles_from_train=True)
