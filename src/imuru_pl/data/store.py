"""Pre-rendered lines of one split, kept in memory as uint8 ink masks and optionally on disk.

All masks sit side by side in one (64, total width) array, so DataLoader worker processes share it
copy-on-write instead of copying thousands of small arrays. On disk a split is one compressed .npz file named
by the data fingerprint; it is written to a temporary name and renamed, so a crash never leaves half a cache.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imuru_pl.console import progress
from imuru_pl.data.batch import LINE_HEIGHT
from imuru_pl.data.synthetic import RenderedLine, SyntheticHandwriting, Writer
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class LineStore:
    masks: np.ndarray  # uint8 (64, sum of widths)
    offsets: np.ndarray  # int64 (n + 1): line i is masks[:, offsets[i]:offsets[i + 1]]
    texts: list[str]
    writer_ids: list[str]
    indices: np.ndarray  # int64 (n,): each line's index among its writer's lines
    keys: list[str]
    starts: np.ndarray  # float32 (sum of letters): where each letter starts, px (`Pen.draw`)
    start_offsets: np.ndarray  # int64 (n + 1): line i's letter starts are starts[start_offsets[i]:...[i + 1]]

    def __len__(self) -> int:
        return len(self.texts)

    def mask(self, i: int) -> np.ndarray:
        return self.masks[:, self.offsets[i] : self.offsets[i + 1]]

    def letter_starts(self, i: int) -> np.ndarray:
        return self.starts[self.start_offsets[i] : self.start_offsets[i + 1]]

    def widths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_lines(cls, lines: list[RenderedLine]) -> LineStore:
        widths = [line.mask.shape[1] for line in lines]
        starts = [line.starts for line in lines]
        return cls(
            masks=np.concatenate([line.mask for line in lines], axis=1)
            if lines
            else np.zeros((LINE_HEIGHT, 0), np.uint8),
            offsets=np.concatenate([[0], np.cumsum(widths)]).astype(np.int64),
            texts=[line.text for line in lines],
            writer_ids=[line.writer.id for line in lines],
            indices=np.array([int(line.key.rsplit("/", 1)[1]) for line in lines], dtype=np.int64),
            keys=[line.key for line in lines],
            starts=np.concatenate(starts).astype(np.float32) if lines else np.zeros(0, np.float32),
            start_offsets=np.concatenate([[0], np.cumsum([len(s) for s in starts])]).astype(np.int64),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            np.savez_compressed(
                handle,
                masks=self.masks,
                offsets=self.offsets,
                texts=np.array(self.texts),
                writer_ids=np.array(self.writer_ids),
                indices=self.indices,
                keys=np.array(self.keys),
                starts=self.starts,
                start_offsets=self.start_offsets,
            )
        os.replace(partial, path)

    @classmethod
    def load(cls, path: Path) -> LineStore:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                masks=data["masks"],
                offsets=data["offsets"],
                texts=[str(t) for t in data["texts"]],
                writer_ids=[str(w) for w in data["writer_ids"]],
                indices=data["indices"],
                keys=[str(k) for k in data["keys"]],
                starts=data["starts"],  # a cache from before letter starts raises KeyError: drawn again
                start_offsets=data["start_offsets"],
            )


def render_split(data: SyntheticHandwriting, writers: list[Writer], lines_per_writer: int) -> LineStore:
    """Every writer's lines 0..lines_per_writer-1, writer by writer; logs the rendering speed."""
    started = time.perf_counter()
    keys = [(writer, index) for writer in writers for index in range(lines_per_writer)]
    lines = [data.line(writer, index) for writer, index in progress(keys, desc="Rendering lines", unit="line")]
    seconds = time.perf_counter() - started
    store = LineStore.from_lines(lines)
    log.info(
        "Rendered %d lines of %d writers in %.1f s (%.0f lines/s, %.0f MB in memory).",
        len(lines),
        len(writers),
        seconds,
        len(lines) / max(seconds, 1e-9),
        store.masks.nbytes / 1e6,
    )
    return store


def cached_split(
    data: SyntheticHandwriting, split: str, lines_per_writer: int, cache_dir: str | Path | None
) -> LineStore:
    """The split's lines from the on-disk cache when present and readable, else rendered (and cached)."""
    writers = data.writers[split]
    if cache_dir is None:
        return render_split(data, writers, lines_per_writer)
    path = Path(cache_dir).expanduser() / f"synthetic-{data.fingerprint}-{split}-{lines_per_writer}.npz"
    if path.is_file():
        try:
            store = LineStore.load(path)
            if len(store) == len(writers) * lines_per_writer:
                log.info("Loaded %d %s lines from %s.", len(store), split, path)
                return store
        except (OSError, ValueError, KeyError) as err:
            log.warning("Ignoring the unreadable line cache %s (%s); rendering again.", path, err)
    store = render_split(data, writers, lines_per_writer)
    try:
        store.save(path)
    except OSError as err:
        raise UserError(
            f"Cannot write the line cache {path} (data.cache_dir): {err.strerror or err}."
        ) from err
    log.info("Cached %s lines at %s.", split, path)
    return store
