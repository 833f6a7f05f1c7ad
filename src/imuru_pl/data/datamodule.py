"""LightningDataModule of the embedded synthetic handwriting (built from `conf/data/synthetic.yaml`).

Each split is rendered once in `setup()` (or read from `cache_dir`) and kept as uint8 ink masks; items are
composed from them, so the training loop never waits on font rendering. Validation and test items are the
same every epoch. Besides loaders it exposes the writers of each split and renders any text for any writer,
which evaluation needs for "real" lines of a given text.
"""

from __future__ import annotations

import logging

import lightning as L
from torch.utils.data import DataLoader

from imuru_pl.data.batch import line_loader
from imuru_pl.data.buckets import check_bucket_batches
from imuru_pl.data.curriculum import check_curriculum, training_loader
from imuru_pl.data.pairs import PAIRINGS, LinePairs, Pairing
from imuru_pl.data.store import LineStore, cached_split
from imuru_pl.data.synthetic import DEFAULT_FONT_PACKAGES, SPLITS, RenderedLine, SyntheticHandwriting, Writer
from imuru_pl.data.text import DEFAULT_CHARSET
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

STAGE_SPLITS = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
    None: SPLITS,
}


class LineDataModule(L.LightningDataModule):
    def __init__(
        self,
        seed: int = 0,
        fonts: list[str] | tuple[str, ...] = DEFAULT_FONT_PACKAGES,
        font_dirs: list[str] | tuple[str, ...] = (),
        text_file: str | None = None,
        charset: str = DEFAULT_CHARSET,
        vocabulary_size: int = 5000,
        frequency_power: float = 0.5,
        words_per_line: tuple[int, int] = (2, 6),
        writers_per_font: int = 5,
        val_fonts: int | list[str] = 1,
        test_fonts: int | list[str] = 2,
        lines_per_writer: dict[str, int] | None = None,
        pairing: Pairing = "other_line",
        max_width: int | None = 512,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        cache_dir: str | None = None,
        latent_cache: bool = False,
        curriculum: dict | None = None,
        bucket_batches: int = 0,
        style: dict | None = None,
        train_style: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        lines = {"train": 160, "val": 16, "test": 16, **(lines_per_writer or {})}
        if set(lines) != set(SPLITS) or any(int(n) < 1 for n in lines.values()):
            raise UserError(
                f"data.lines_per_writer needs train, val and test counts of at least 1; got {lines}."
            )
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if int(value) < 1:
                raise UserError(f"data.{name} must be at least 1; got {value}.")
        if pairing not in PAIRINGS:
            raise UserError(f"data.pairing must be one of {', '.join(PAIRINGS)}; got {pairing!r}.")
        if int(num_workers) < 0:
            raise UserError(f"data.num_workers must be 0 or more; got {num_workers}.")
        self.lines_per_writer = {k: int(v) for k, v in lines.items()}
        self.pairing, self.seed = pairing, int(seed)
        self.batch_size, self.eval_batch_size, self.num_workers = (
            int(batch_size),
            int(eval_batch_size),
            int(num_workers),
        )
        self.cache_dir, self.latent_cache = cache_dir, bool(latent_cache)
        self.curriculum = check_curriculum(curriculum)
        self.bucket_batches = check_bucket_batches(bucket_batches)
        self.data = SyntheticHandwriting(
            seed=self.seed,
            fonts=fonts,
            font_dirs=font_dirs,
            text_file=text_file,
            charset=charset,
            vocabulary_size=vocabulary_size,
            frequency_power=frequency_power,
            words_per_line=tuple(words_per_line),
            writers_per_font=writers_per_font,
            val_fonts=val_fonts,
            test_fonts=test_fonts,
            max_width=max_width,
            style=style,
            train_style=train_style,
        )
        self.stores: dict[str, LineStore] = {}
        self.train_dataset: LinePairs | None = None
        self.val_dataset: LinePairs | None = None
        self.test_dataset: LinePairs | None = None

    # --- what the rest of the project asks of the data ---------------------------------------------------
    def writers(self, split: str) -> list[Writer]:
        """The writers of a split (`train`, `val` or `test`); no writer is in two splits."""
        if split not in SPLITS:
            raise UserError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
        return list(self.data.writers[split])

    def writer(self, writer_id: str) -> Writer:
        return self.data.writer(writer_id)

    def render(self, text: str, writer: Writer | str, seed: int = 0) -> RenderedLine:
        """`text` in a writer's hand: `.clean` is the (1, 64, w) target, `.styled` the (3, 64, w) line."""
        return self.data.render(text, writer, seed)

    def line(self, writer: Writer | str, index: int) -> RenderedLine:
        """Line `index` of a writer's split, identical to what the split's dataset holds."""
        return self.data.line(writer, index)

    @property
    def fingerprint(self) -> str:
        return self.data.fingerprint

    # --- Lightning hooks ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """With a cache directory, render missing splits once (one process); every rank then loads them."""
        if self.cache_dir is not None:
            for split in SPLITS:
                cached_split(self.data, split, self.lines_per_writer[split], self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage, SPLITS):
            if split not in self.stores:
                self.stores[split] = cached_split(
                    self.data, split, self.lines_per_writer[split], self.cache_dir
                )
            setattr(self, f"{split}_dataset", self.dataset(split))

    def dataset(self, split: str) -> LinePairs:
        if split not in self.stores:
            self.setup({"train": "fit", "val": "validate", "test": "test"}.get(split, split))
        return LinePairs(self.stores[split], self.writers(split), self.pairing, self.seed)

    def train_dataloader(self) -> DataLoader:
        return training_loader(self, self.train_dataset or self.dataset("train"))  # shuffled, or short texts first (data.curriculum)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset or self.dataset("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset or self.dataset("test"), self.eval_batch_size, shuffle=False)

    def _loader(self, dataset: LinePairs, batch_size: int, shuffle: bool) -> DataLoader:
        return line_loader(dataset, batch_size, shuffle, self.num_workers)
