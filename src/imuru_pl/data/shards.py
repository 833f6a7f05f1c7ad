"""WebDataset tar shards in the font-square layout (`data=webdataset`, `conf/data/webdataset.yaml`).

Each sample of a shard holds `style.rgb.png` (the style line on paper), `gen.bw.png` (the clean target line)
and `json` with `gen_text`, `style_text` and `writer_id`; shards that also hold `gen.rgb.png` (the target on
paper) give the VAE stage its same-line pairs. Shards are named by local paths, globs, brace patterns
(`shards/{000000..000498}.tar`), `pipe:` commands or URLs, one pattern or a list, for training
(`data.urls`), validation (`data.val_urls`) and test (`data.test_urls`).

Training reads the shards without end: shards are split by rank (DDP) and by loader worker (when there are
fewer shards than workers in all, every worker reads every shard and keeps its share of the samples), each pass
shuffles the shard order (`data.shard_shuffle`) and samples go through a shuffle buffer
(`data.sample_shuffle`); `data.samples_per_epoch` is the length of an epoch. Validation and test read the
first `data.val_samples` / `data.test_samples` samples of their shards once, in order, and keep them (as
compressed bytes) for every evaluation.

Images become line tensors as any image does here (`image.load_line`: 64 px high, any mode or size, the
background as `data.background` says). A sample wider than `data.max_width` is left out, never cropped. A
sample that cannot be read (bad PNG, missing key, bad json) or a shard that cannot be opened is skipped with a
warning and counted (`skip_counts()`, logged as `data/skipped_<reason>`), never a crash.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import math
import os
import random
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from imuru_pl.data.batch import LineSample, collate_lines, line_loader
from imuru_pl.data.streaming import SkipCounts, fixed_lines_only, rank_and_world, worker_start
from imuru_pl.data.image import load_line
from imuru_pl.data.real import RealWriter, check_line_settings, normalize_text
from imuru_pl.data.synthetic import SPLITS
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

SKIP_REASONS = ("too_wide", "corrupt_sample", "missing_keys", "shard_error")
STYLE_KEY, TARGET_KEY, TARGET_PAPER_KEY, STYLE_CLEAN_KEY = "style.rgb.png", "gen.bw.png", "gen.rgb.png", "style.bw.png"
REMOTE = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://", "sftp://", "scp://", "ftps://")
GLOB_CHARS = set("*?[")


def expand_patterns(patterns, key: str) -> list[str]:
    """Shard urls of one or more patterns: brace ranges expanded, local globs resolved, local files checked.

    A pattern that names no shard is one UserError sentence; `pipe:` commands and URLs are taken as given.
    """
    import braceexpand

    if patterns is None or (isinstance(patterns, str) and not patterns.strip()):
        raise UserError(f"{key} is not set: give shard files, e.g. {key}='shards/{{000000..000009}}.tar'.")
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    urls: list[str] = []
    for pattern in items:
        found: list[str] = []
        for part in str(pattern).split("::"):
            for url in braceexpand.braceexpand(part.strip()):
                if url.startswith(REMOTE):
                    found.append(url)
                    continue
                path = url[len("file:"):] if url.startswith("file:") else url
                path = os.path.expanduser(path)
                if GLOB_CHARS & set(path):
                    found += sorted(p for p in glob.glob(path) if os.path.isfile(p))
                elif os.path.isfile(path):
                    found.append(path)
        if not found:
            raise UserError(f"{key}={pattern} matches no shard file.")
        urls += found
    return urls


def shard_sample_key(line_key: str) -> str:
    """The `__key__` of the shard sample a line key (`wds:<shard>:<key>/<image key>`) came from."""
    return line_key.rsplit(":", 1)[-1].split("/", 1)[0]


def decode_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.copy()


class SampleReader:
    """Turns one raw WebDataset sample (bytes per key) into a `LineSample`, or None (counted) when it cannot."""

    def __init__(self, pairing: str, max_width: int | None, background: str, counts: SkipCounts):
        self.pairing, self.max_width, self.background, self.counts = pairing, max_width, background, counts

    def keys_for(self, sample: dict) -> tuple[str, str] | None:
        if self.pairing == "same_line":
            if TARGET_PAPER_KEY in sample and TARGET_KEY in sample:
                return TARGET_PAPER_KEY, TARGET_KEY
            if STYLE_KEY in sample and STYLE_CLEAN_KEY in sample:
                return STYLE_KEY, STYLE_CLEAN_KEY
            return None
        return (STYLE_KEY, TARGET_KEY) if STYLE_KEY in sample and TARGET_KEY in sample else None

    def __call__(self, sample: dict) -> LineSample | None:
        name = f"{Path(str(sample.get('__url__', '?'))).name}:{sample.get('__key__', '?')}"
        keys = self.keys_for(sample)
        if keys is None or "json" not in sample:
            self.counts.add("missing_keys", f"{name} has {sorted(k for k in sample if not k.startswith('__'))}")
            return None
        try:
            meta = json.loads(sample["json"]) if isinstance(sample["json"], (bytes, str)) else dict(sample["json"])
            gen_text, style_text = normalize_text(str(meta["gen_text"])), normalize_text(str(meta["style_text"]))
            writer = str(meta.get("writer", meta["writer_id"]))
            style_img, target_img = decode_png(sample[keys[0]]), decode_png(sample[keys[1]])
            if self.max_width is not None:
                widest = max(round(img.width * 64 / img.height) for img in (style_img, target_img))
                if widest > self.max_width:
                    self.counts.add("too_wide")
                    return None
            style = load_line(style_img, 3, max_width=None, background=self.background, name=f"{name} {keys[0]}")
            target = load_line(target_img, 1, max_width=None, background=self.background, name=f"{name} {keys[1]}")
        except Exception as err:  # noqa: BLE001 - a bad sample is skipped, whatever is wrong with it
            self.counts.add("corrupt_sample", f"{name} ({type(err).__name__}: {str(err)[:120]})")
            return None
        text = style_text if self.pairing == "same_line" and keys[0] == STYLE_KEY else gen_text  # the line drawn
        base = f"wds:{name}"
        return LineSample(style=style, target=target, text=text, writer=writer,
                          style_text=style_text if self.pairing == "other_line" else text,
                          style_key=f"{base}/{keys[0]}", target_key=f"{base}/{keys[1]}")


def raw_samples(urls: list[str], counts: SkipCounts, shuffle: int, seed: int) -> Iterator[dict]:
    """Raw samples (key -> bytes) of the shards in order (or shuffled in a buffer of `shuffle` shards), through
    webdataset's tar reader; a shard that fails to open or read is counted and the next one follows."""
    import webdataset as wds

    def handler(err: Exception) -> bool:
        counts.add("shard_error", f"{type(err).__name__}: {str(err)[:160]}")
        return True

    order = list(urls)
    if shuffle and shuffle > 1:
        order = list(wds.filters.shuffle(iter(order), bufsize=int(shuffle), initial=int(shuffle),
                                         rng=random.Random(seed)))
    streams = wds.tariterators.url_opener(({"url": u} for u in order), handler=handler)
    files = wds.tariterators.tar_file_expander(streams, handler=handler)
    yield from wds.tariterators.group_by_keys(files, handler=handler)


class ShardStream(IterableDataset):
    """The training samples of one rank: endless passes over its shards, `samples_per_epoch` in an epoch."""

    def __init__(self, urls: list[str], reader: SampleReader, batch_size: int, samples_per_epoch: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0, shard_shuffle: int = 100,
                 sample_shuffle: int = 1000):
        self.urls, self.reader, self.batch_size = list(urls), reader, int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), max(1, int(world_size))
        self.workers = max(1, int(workers))
        self.shard_shuffle, self.sample_shuffle = int(shard_shuffle), int(sample_shuffle)
        self.batches_per_epoch = max(1, math.ceil(int(samples_per_epoch) / (self.world_size * self.batch_size)))
        self.epoch = 0

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def _samples(self, role: int, roles: int) -> Iterator[LineSample]:
        """Endless converted samples of one global worker (`role` of `roles`)."""
        by_shard = len(self.urls) >= roles
        for attempt in range(1_000_000):
            got = 0
            seed = hash((self.seed, attempt)) & 0xFFFFFFFF
            if by_shard:  # the same shuffled order everywhere, then every `roles`-th shard
                order = list(self.urls)
                random.Random(seed).shuffle(order) if self.shard_shuffle > 1 else None
                mine = order[role::roles]
                raws = raw_samples(mine, self.reader.counts, 0, seed)
            else:
                raws = islice(raw_samples(self.urls, self.reader.counts, self.shard_shuffle, seed), role, None,
                              roles)
            buffer: list[dict] = []
            rng = random.Random(seed + role)
            for raw in raws:
                if self.sample_shuffle > 1:
                    buffer.append(raw)
                    if len(buffer) < self.sample_shuffle:
                        continue
                    raw = buffer.pop(rng.randrange(len(buffer)))
                item = self.reader(raw)
                if item is not None:
                    got += 1
                    yield item
            rng.shuffle(buffer)
            for raw in buffer:
                item = self.reader(raw)
                if item is not None:
                    got += 1
                    yield item
            if got == 0:
                raise UserError("No usable sample in a whole pass over the training shards (see the warnings "
                                "above): check data.urls.")

    def __iter__(self) -> Iterator[LineSample]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        roles = self.world_size * workers
        role = self.rank * workers + worker
        mine = len(range(worker, self.batches_per_epoch, workers))
        samples = self._samples(role, roles)
        for _ in range(mine * self.batch_size):
            yield next(samples)


class StoredSamples(Dataset):
    """The first samples of the validation or test shards, kept as raw bytes and converted on access."""

    def __init__(self, raws: list[dict], reader: SampleReader):
        self.raws, self.reader = raws, reader

    def __len__(self) -> int:
        return len(self.raws)

    def __getitem__(self, i: int) -> LineSample:
        item = self.reader(self.raws[i])
        if item is None:
            raise UserError(f"Stored sample {i} can no longer be read.")
        return item


class ShardDataModule(L.LightningDataModule):
    def __init__(
        self,
        urls=None,
        val_urls=None,
        test_urls=None,
        seed: int = 0,
        pairing: str = "other_line",
        max_width: int | None = 1024,
        background: str = "none",
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        samples_per_epoch: int = 100_000,
        shard_shuffle: int = 100,
        sample_shuffle: int = 1000,
        val_samples: int = 256,
        test_samples: int = 256,
        latent_cache: bool = False,
        curriculum: dict | None = None,
        bucket_batches: int = 0,
    ):
        super().__init__()
        check_line_settings(pairing, background, max_width, batch_size=batch_size,
                            eval_batch_size=eval_batch_size, samples_per_epoch=samples_per_epoch,
                            val_samples=val_samples, test_samples=test_samples, num_workers=num_workers,
                            shard_shuffle=shard_shuffle, sample_shuffle=sample_shuffle)
        # every pattern is checked now, before any training starts
        self.urls = {"train": expand_patterns(urls, "data.urls"),
                     "val": expand_patterns(val_urls, "data.val_urls")}
        self.urls["test"] = expand_patterns(test_urls, "data.test_urls") if test_urls else self.urls["val"]
        self.seed, self.pairing, self.background = int(seed), pairing, background
        self.max_width = None if max_width is None else int(max_width)
        self.batch_size, self.eval_batch_size, self.num_workers = int(batch_size), int(eval_batch_size), int(num_workers)
        self.samples_per_epoch = int(samples_per_epoch)
        self.shard_shuffle, self.sample_shuffle = int(shard_shuffle), int(sample_shuffle)
        self.limits = {"val": int(val_samples), "test": int(test_samples)}
        self.latent_cache, self.curriculum, self.bucket_batches = bool(latent_cache), dict(curriculum or {}), int(bucket_batches)
        fixed_lines_only(self, "shards")
        self.counts = SkipCounts(SKIP_REASONS, self.num_workers)
        self._stored: dict[str, StoredSamples] = {}
        self.train_dataset = self.val_dataset = self.test_dataset = None
        log.info("WebDataset shards: %d train, %d validation, %d test.", *(len(self.urls[s]) for s in SPLITS))

    def reader(self) -> SampleReader:
        return SampleReader(self.pairing, self.max_width, self.background, self.counts)

    def stored(self, split: str) -> StoredSamples:
        if split not in self._stored:
            raws, reader = [], self.reader()
            for raw in raw_samples(self.urls[split], self.counts, 0, self.seed):
                if reader(raw) is not None:
                    raws.append({k: v for k, v in raw.items() if k in ("__key__", "__url__", "json", STYLE_KEY,
                                                                       TARGET_KEY, TARGET_PAPER_KEY,
                                                                       STYLE_CLEAN_KEY)})
                if len(raws) >= self.limits[split]:
                    break
            if not raws:
                raise UserError(f"The {split} shards ({self.urls[split][0]}, ...) hold no usable sample.")
            self._stored[split] = StoredSamples(raws, reader)
        return self._stored[split]

    def train_stream(self) -> ShardStream:
        rank, world = rank_and_world(self.trainer)
        if len(self.urls["train"]) < world:
            raise UserError(f"data.urls names {len(self.urls['train'])} shard(s) for {world} processes: give at "
                            "least one training shard per process.")
        return ShardStream(self.urls["train"], self.reader(), self.batch_size, self.samples_per_epoch, self.seed,
                           rank, world, self.num_workers, self.shard_shuffle, self.sample_shuffle)

    # --- what the rest of the project asks of the data -----------------------------------------------
    def writers(self, split: str) -> list[RealWriter]:
        if split not in SPLITS:
            raise UserError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}.")
        if split == "train":
            return []
        ids = {str(json.loads(r["json"]).get("writer", json.loads(r["json"])["writer_id"]))
               for r in self.stored(split).raws}
        return [RealWriter(w, split) for w in sorted(ids)]

    def line_with_text(self, text: str, other_than: str, split: str = "test") -> torch.Tensor | None:
        wanted, dataset = normalize_text(text), self.stored(split)
        for i, raw in enumerate(dataset.raws):
            meta = json.loads(raw["json"])
            if str(meta.get("writer", meta["writer_id"])) != other_than and normalize_text(meta["gen_text"]) == wanted:
                return dataset[i]["target"]
        return None

    def skip_counts(self) -> dict[str, int]:
        return self.counts.totals()

    # --- Lightning hooks -----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, SPLITS):
            if split == "train":
                self.train_dataset = self.dataset("train")
            else:
                setattr(self, f"{split}_dataset", self.stored(split))

    def dataset(self, split: str):
        if split == "train":
            return TrainView(self)
        return self.stored(split)

    def train_dataloader(self) -> DataLoader:
        stream = self.train_stream()
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=collate_lines, persistent_workers=False,
                          multiprocessing_context=worker_start(stream.world_size, self.num_workers))

    def val_dataloader(self) -> DataLoader:
        return line_loader(self.stored("val"), self.eval_batch_size, False, 0)

    def test_dataloader(self) -> DataLoader:
        return line_loader(self.stored("test"), self.eval_batch_size, False, 0)


class TrainView(Dataset):
    """A map-style window on the first training samples (previews, "seen" lines, the line reader), read in
    shard order and kept: `min(samples_per_epoch, 1024)` of them."""

    LIMIT = 1024

    def __init__(self, datamodule: ShardDataModule):
        self.datamodule = datamodule
        self.length = min(datamodule.samples_per_epoch, self.LIMIT)
        self._stored: StoredSamples | None = None

    def _load(self) -> StoredSamples:
        if self._stored is None:
            dm, raws, reader = self.datamodule, [], self.datamodule.reader()
            for raw in raw_samples(dm.urls["train"], dm.counts, 0, dm.seed):
                if reader(raw) is not None:
                    raws.append(raw)
                if len(raws) >= self.length:
                    break
            self._stored = StoredSamples(raws, reader)
            self.length = len(raws)
        return self._stored

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, i: int) -> LineSample:
        return self._load()[i]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stored"] = None
        return state
