"""Real handwriting lines (IAM, a folder of your own) as the same `LineSample` pairs as the synthetic data.

A real dataset is an index of line images with their text and writer. It is checked once, cheaply (file
headers, not pixels): missing, empty and unreadable files and lines too wide for `max_width` are left out and
counted in ONE warning per dataset; nothing usable at all is one `UserError`. Images are decoded when a batch
needs them (`load_line`: 64 px high, background brought to white, ink dark), so a dataset of any size costs
no memory up front. Pairs follow the synthetic contract: the style is another line of the same writer with a
different text (`other_line`) or the same line in colour (`same_line`, for the VAE).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from imuru_pl.data.batch import LINE_HEIGHT, LineSample, line_loader
from imuru_pl.data.buckets import check_bucket_batches
from imuru_pl.data.curriculum import check_curriculum, training_loader
from imuru_pl.data.image import MIN_SOURCE_HEIGHT, load_line
from imuru_pl.data.pairs import PAIRINGS, Pairing, style_partners
from imuru_pl.data.synthetic import SPLITS, stable_seed
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

BACKGROUNDS = ("stretch", "binarize", "none")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


@dataclass(frozen=True)
class LineRecord:
    """One line image of a dataset index."""

    path: Path
    text: str
    writer: str
    key: str  # stable id of the line, e.g. "iam/a01-000u-00" (latent cache keys add /style or /target)


@dataclass(frozen=True)
class RealWriter:
    """A writer of a real dataset (`id` as the dataset names it)."""

    id: str
    split: str


class SkipCounter:
    """Lines left out of one dataset, by reason, reported together in one warning."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.items: dict[str, dict[str, None]] = {}  # reason -> distinct lines (an ordered set)

    def add(self, reason: str, item: str | Path) -> None:
        self.items.setdefault(reason, {})[str(item)] = None

    @property
    def counts(self) -> dict[str, int]:
        return {reason: len(items) for reason, items in self.items.items()}

    def __len__(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        ranked = sorted(self.items.items(), key=lambda kv: -len(kv[1]))
        return ", ".join(f"{len(items)} {reason} (e.g. {next(iter(items))})" for reason, items in ranked)

    def warn(self, listed: int) -> None:
        """The one warning: `listed` is every line the dataset names (usable or not)."""
        if self.items:
            log.warning("%s: left out %d of %d lines: %s.", self.dataset, len(self), listed, self.summary())


def normalize_text(text: str) -> str:
    """One space between words, none at the ends: texts from different files compare equal."""
    return " ".join(text.split())


def width_at_line_height(width: int, height: int) -> int:
    """Width in px after scaling to 64 px high, as `load_line` computes it."""
    return max(MIN_SOURCE_HEIGHT, round(width * LINE_HEIGHT / height))


def probe(path: Path) -> tuple[int, int] | str:
    """(width, height) of a readable image file, or why it cannot be used; reads headers and checksums."""
    try:
        if path.stat().st_size == 0:
            return "empty files"
    except FileNotFoundError:
        return "missing images"
    except OSError:
        return "unreadable files"
    if not path.is_file():
        return "missing images"
    try:
        with Image.open(path) as img:
            size = img.size
            img.verify()  # PNG: every chunk's CRC; catches truncated files without decoding pixels
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "unreadable files"
    if min(size) < MIN_SOURCE_HEIGHT:
        return f"images smaller than {MIN_SOURCE_HEIGHT} px"
    return size


@dataclass
class LineTable:
    """Usable lines of a dataset, sorted by writer; `texts`/`writer_ids` let `style_partners` pair them."""

    records: list[LineRecord]
    widths: np.ndarray  # px at 64 px high

    def __post_init__(self) -> None:
        self.texts = [r.text for r in self.records]
        self.writer_ids = [r.writer for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, rows: list[int]) -> LineTable:
        return LineTable([self.records[i] for i in rows], self.widths[rows] if rows else self.widths[:0])


def usable_lines(records: list[LineRecord], max_width: int | None, skipped: SkipCounter) -> LineTable:
    """Keep the records whose image is readable and, at 64 px high, at most `max_width` wide."""
    kept, widths = [], []
    for record in records:
        found = probe(record.path)
        if isinstance(found, str):
            skipped.add(found, record.path)
            continue
        width = width_at_line_height(*found)
        if max_width is not None and width > max_width:
            # Never cropped: a cropped image would no longer show its whole text.
            skipped.add(f"lines wider than data.max_width={max_width} px", record.path)
            continue
        kept.append(record)
        widths.append(width)
    order = sorted(range(len(kept)), key=lambda i: (kept[i].writer, kept[i].key))
    return LineTable([kept[i] for i in order], np.asarray([widths[i] for i in order], dtype=np.int64))


def split_writers(
    writers: list[str], val_fraction: float, test_fraction: float, seed: int, dataset: str
) -> dict[str, str]:
    """writer -> split: a seeded, writer-disjoint draw of val and test writers (at least one each)."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < float(value) < 1:
            raise UserError(f"data.{name} must be between 0 and 1 (exclusive); got {value}.")
    names = sorted(set(writers))
    n_val = max(1, round(val_fraction * len(names)))
    n_test = max(1, round(test_fraction * len(names)))
    if len(names) - n_val - n_test < 1:
        raise UserError(
            f"{dataset} has {len(names)} writer(s): a writer-disjoint split needs at least 3 "
            "(train, val, test)."
        )
    order = [
        names[i] for i in np.random.default_rng(stable_seed(seed, "real-writers")).permutation(len(names))
    ]
    assignment = dict.fromkeys(order[:n_val], "val")
    assignment.update(dict.fromkeys(order[n_val : n_val + n_test], "test"))
    return {w: assignment.get(w, "train") for w in names}


class RealPairs(Dataset):
    """`LineSample` items of one split: each target line once, its style another line of the same writer.

    `pool` holds the split's target lines (rows `targets`) plus any lines that may serve as styles only.
    """

    def __init__(self, pool: LineTable, targets: list[int], pairing: Pairing, seed: int, background: str):
        self.pool, self.targets, self.pairing, self.background = pool, targets, pairing, background
        self.partners = np.arange(len(pool)) if pairing == "same_line" else style_partners(pool, seed)

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def texts(self) -> list[str]:
        """The target text of every item, in order."""
        return [self.pool.records[row].text for row in self.targets]

    @property
    def pixel_widths(self) -> np.ndarray:
        """(N, 2) px width at 64 px high of every item's style image and target (from the image headers)."""
        rows = np.asarray(self.targets, dtype=np.int64)
        return np.stack([self.pool.widths[self.partners[rows]], self.pool.widths[rows]], axis=1)

    def record(self, i: int) -> LineRecord:
        return self.pool.records[self.targets[i]]

    def load(self, record: LineRecord, channels: int) -> torch.Tensor:
        return load_line(
            record.path, channels, max_width=None, background=self.background, name=str(record.path)
        )

    def __getitem__(self, i: int) -> LineSample:
        row = self.targets[i]
        target, style = self.pool.records[row], self.pool.records[int(self.partners[row])]
        return LineSample(
            style=self.load(style, 3),
            target=self.load(target, 1),
            text=target.text,
            writer=target.writer,
            style_text=style.text,
            style_key=f"{style.key}/style",
            target_key=f"{target.key}/target",
        )


@dataclass
class SplitPlan:
    """Which usable lines are targets of each split, and which may only lend their style."""

    table: LineTable
    split_of: list[tuple[str, ...]]  # per row of `table`: the splits it is a target of (none: unused)
    styles_from_train: bool = (
        False  # val/test targets may take their style from the same writer's train lines
    )


def check_line_settings(pairing: str, background: str, max_width: int | None, **counts: int) -> None:
    """The settings every module of image lines checks: pairing, background, max_width, and counts that
    must be at least 1 (`*batch_size`, `*samples*`) or 0 or more (the rest: workers, shuffle sizes)."""
    if pairing not in PAIRINGS:
        raise UserError(f"data.pairing must be one of {', '.join(PAIRINGS)}; got {pairing!r}.")
    if background not in BACKGROUNDS:
        raise UserError(f"data.background must be one of {', '.join(BACKGROUNDS)}; got {background!r}.")
    if max_width is not None and int(max_width) < 16:
        raise UserError(f"data.max_width must be at least 16 px (or null); got {max_width}.")
    for name, value in counts.items():
        least = 1 if name.endswith("batch_size") or "samples" in name else 0
        if int(value) < least:
            raise UserError(f"data.{name} must be {'at least 1' if least else '0 or more'}; got {value}.")


class RealLineDataModule(L.LightningDataModule):
    """Shared loaders, splits and pairing of real line datasets; subclasses read an index and plan splits."""

    dataset_name = "real lines"
    root_help = "the dataset's folder"

    def __init__(
        self,
        root: str | None,
        seed: int = 0,
        pairing: Pairing = "other_line",
        max_width: int | None = 2048,
        background: str = "stretch",
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        latent_cache: bool = False,
        curriculum: dict | None = None,
        bucket_batches: int = 0,
    ):
        super().__init__()
        if not root:
            raise UserError(f"data.root is not set: give {self.root_help} (data.root=<folder>).")
        self.root = Path(str(root)).expanduser()
        if not self.root.is_dir():
            raise UserError(f"data.root={root} is not a folder.")
        check_line_settings(pairing, background, max_width, batch_size=batch_size,
                            eval_batch_size=eval_batch_size, num_workers=num_workers)
        self.seed, self.pairing, self.background = int(seed), pairing, background
        self.max_width = None if max_width is None else int(max_width)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.latent_cache = int(num_workers), bool(latent_cache)
        self.curriculum = check_curriculum(curriculum)
        self.bucket_batches = check_bucket_batches(bucket_batches)
        self._datasets: dict[str, RealPairs] | None = None
        self.train_dataset: RealPairs | None = None
        self.val_dataset: RealPairs | None = None
        self.test_dataset: RealPairs | None = None

    # --- what subclasses provide ---------------------------------------------------------------------
    def read_index(self, skipped: SkipCounter) -> list[LineRecord]:
        """Every line the dataset lists (not yet checked on disk); rows it cannot use go to `skipped`."""
        raise NotImplementedError

    def plan_splits(self, table: LineTable) -> SplitPlan:
        raise NotImplementedError

    # --- building the splits once --------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.dataset_name} at {self.root}"

    @property
    def datasets(self) -> dict[str, RealPairs]:
        if self._datasets is None:
            self._datasets = self._build()
        return self._datasets

    def _build(self) -> dict[str, RealPairs]:
        skipped = SkipCounter(self.label)
        records = self.read_index(skipped)
        listed = len(records) + len(skipped)
        table = usable_lines(records, self.max_width, skipped)
        if self.pairing == "other_line":  # before splitting, so that no split draws a writer it cannot pair
            table = table.subset(self._pairable(table, range(len(table)), skipped, "lines"))
        if len(table) == 0:
            detail = f": {skipped.summary()}" if skipped.counts else ""
            raise UserError(f"{self.label} has no usable line{detail}.")
        plan = self.plan_splits(table)
        datasets = {}
        for split in SPLITS:
            pool_rows, targets = self._pool(plan, split, skipped)
            if not targets:
                raise UserError(
                    f"{self.label} has no usable {split} line; see docs/real_data.md for its split rules."
                )
            datasets[split] = RealPairs(
                plan.table.subset(pool_rows), targets, self.pairing, self.seed, self.background
            )
        skipped.warn(listed)
        log.info(
            "%s: %s.",
            self.label,
            ", ".join(
                f"{len(d)} {s} lines of {len({d.record(i).writer for i in range(len(d))})} writers"
                for s, d in datasets.items()
            ),
        )
        return datasets

    def _pool(self, plan: SplitPlan, split: str, skipped: SkipCounter) -> tuple[list[int], list[int]]:
        """Rows of the split's style pool and, within the pool, the target positions."""
        records = plan.table.records
        rows = [i for i, splits in enumerate(plan.split_of) if split in splits]
        lenders: list[int] = []
        if plan.styles_from_train and split != "train":
            writers = {records[i].writer for i in rows}
            lenders = [
                i
                for i, splits in enumerate(plan.split_of)
                if "train" in splits and records[i].writer in writers
            ]
        if self.pairing == "other_line":
            pairable = set(self._pairable(plan.table, rows + lenders, skipped, f"{split} lines"))
            rows = [i for i in rows if i in pairable]
            lenders = [i for i in lenders if i in pairable]
        pool = sorted(rows + lenders, key=lambda i: (records[i].writer, records[i].key))
        position = {row: p for p, row in enumerate(pool)}
        return pool, sorted(position[i] for i in rows)

    @staticmethod
    def _pairable(table: LineTable, rows: Iterable[int], skipped: SkipCounter, what: str) -> list[int]:
        """The rows whose writer has another line with another text among `rows` (a style to take)."""
        rows = list(rows)
        texts: dict[str, set[str]] = {}
        for i in rows:
            texts.setdefault(table.records[i].writer, set()).add(table.records[i].text)
        lonely = {w for w, t in texts.items() if len(t) < 2}
        for i in rows:
            if table.records[i].writer in lonely:
                skipped.add(
                    f"{what} of writers with no other line (other text) to take a style from",
                    table.records[i].path,
                )
        return [i for i in rows if table.records[i].writer not in lonely]

    # --- what the rest of the project asks of the data -----------------------------------------------
    def writers(self, split: str) -> list[RealWriter]:
        """The writers whose lines are targets of a split (`train`, `val` or `test`)."""
        if split not in SPLITS:
            raise UserError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
        dataset = self.datasets[split]
        return [RealWriter(w, split) for w in sorted({dataset.record(i).writer for i in range(len(dataset))})]

    def line_with_text(self, text: str, other_than: str, split: str = "test") -> torch.Tensor | None:
        """The target image (1, 64, w) of a line of `split` with this exact text by another writer, if any."""
        dataset, wanted = self.datasets[split], normalize_text(text)
        for i in range(len(dataset)):
            record = dataset.record(i)
            if record.writer != other_than and record.text == wanted:
                return dataset.load(record, 1)
        return None

    # --- Lightning hooks -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage, SPLITS):
            setattr(self, f"{split}_dataset", self.datasets[split])

    def dataset(self, split: str) -> RealPairs:
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        return training_loader(self, self.datasets["train"])  # shuffled, or short texts first (data.curriculum)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"], self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: RealPairs, batch_size: int, shuffle: bool) -> DataLoader:
        return line_loader(dataset, batch_size, shuffle, self.num_workers)
