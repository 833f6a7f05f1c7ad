"""Streamed synthetic writers: fresh (style, target) pairs without end, every one a pure function of (seed, k).

Sample k (`stream_renderer.py`) is a font, a writer's rendering parameters and two different texts drawn
from (seed, k) alone; each sample is its own writer, so the stream never shows the same hand twice.

Who renders what: DDP rank r of W with loader workers 0..n-1 has G = W * n "roles"; role g renders the
samples k = g, g + G, g + 2G, ... and each loader batch holds consecutive samples of one role. The union over
all processes is exactly the index stream; more workers or ranks change only who renders a sample.

Position: `StreamCursor` keeps, per role, the next sample index not yet trained on, and how many batches this
rank consumed. When a checkpoint is written (the data module's `state_dict`) it is moved past the batches the
training loop has processed (Lightning fetches one batch ahead: that one is not counted), and a resumed
run starts each role at its next unseen sample, with the same batch order as the uninterrupted run (same
world size and workers; with other counts it still trains on exactly the unseen samples, in another order).

Validation and test keep the fixed lines of `LineDataModule` (writers of held-out font families); those
families never enter the stream, nor does an extra font file whose family name is held out.

A sample wider than `data.max_width` loses trailing words until it fits (`too_wide: shorten`, the default, as
the fixed synthetic data does) or is dropped (`drop`); either way it is counted, never cropped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from imuru_pl.data.batch import LineSample, collate_lines
from imuru_pl.data.datamodule import STAGE_SPLITS, LineDataModule
from imuru_pl.data.fonts import font_files
from imuru_pl.data.store import cached_split
from imuru_pl.data.stream_renderer import SKIP_REASONS, StreamRenderer, sample_index
from imuru_pl.data.streaming import SkipCounts, fixed_lines_only, rank_and_world, worker_start
from imuru_pl.data.synthetic import SPLITS
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["SKIP_REASONS", "StreamCursor", "StreamDataModule", "StreamLoader", "StreamRenderer", "SyntheticStream",
           "sample_index"]


# --- where the stream stands --------------------------------------------------------------------------
class StreamCursor:
    """Per role, the next sample index not yet trained on, and the batches this rank consumed so far.

    `frontier[g]` for a modulus M: every sample k with k < frontier[k % M] was trained on, every other not.
    """

    def __init__(self, modulus: int = 1):
        self.modulus = max(1, int(modulus))
        self.frontier = list(range(self.modulus))
        self.batches = 0

    def state_dict(self) -> dict:
        return {"modulus": self.modulus, "frontier": list(self.frontier), "batches": int(self.batches)}

    def load_state_dict(self, state: dict) -> None:
        self.modulus = int(state["modulus"])
        self.frontier = [int(v) for v in state["frontier"]]
        self.batches = int(state.get("batches", 0))
        if len(self.frontier) != self.modulus:
            raise UserError("The checkpoint's stream position is damaged (frontier and modulus disagree).")

    @property
    def next_index(self) -> int:
        """The smallest sample index not trained on yet."""
        return min(self.frontier)

    def seen(self, k: int) -> bool:
        return k < self.frontier[k % self.modulus]

    def consumed(self, indices: list[int], roles: int) -> None:
        """A batch of samples (all of one role of `roles`) was taken by the training loop."""
        self.batches += 1
        if roles != self.modulus:  # the first batch under a new split: re-express the frontier
            old = StreamCursor(self.modulus)
            old.frontier, old.batches = self.frontier, self.batches
            start = old.next_index
            self.modulus, self.frontier = roles, [start + ((g - start) % roles) for g in range(roles)]
            for g in range(roles):
                while old.seen(self.frontier[g]):
                    self.frontier[g] += roles
        top = max(indices)
        role = top % self.modulus
        self.frontier[role] = max(self.frontier[role], top + self.modulus)


class SyntheticStream(IterableDataset):
    """The training stream of one rank: `LineSample`s, each loader batch consecutive samples of one role.

    Every iterator yields the rest of the current epoch (`batches_per_epoch` batches per rank), starting at the
    cursor it was handed (`start`), so that a fresh iterator after a resume continues exactly.
    """

    def __init__(self, renderer: StreamRenderer, batch_size: int, samples_per_epoch: int, rank: int = 0,
                 world_size: int = 1, workers: int = 0, pairing: str = "other_line",
                 counts: SkipCounts | None = None):
        self.renderer, self.batch_size = renderer, int(batch_size)
        self.rank, self.world_size = int(rank), max(1, int(world_size))
        self.workers = max(1, int(workers))
        self.roles = self.world_size * self.workers
        self.batches_per_epoch = max(1, math.ceil(int(samples_per_epoch) / (self.world_size * self.batch_size)))
        self.pairing = pairing
        self.counts = counts if counts is not None else SkipCounts(SKIP_REASONS, workers)
        self.start = StreamCursor(self.roles)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def role_frontier(self, role: int) -> int:
        """The first unseen sample of a global role under the start cursor."""
        cursor = self.start
        if cursor.modulus == self.roles:
            return cursor.frontier[role]
        k = cursor.next_index + ((role - cursor.next_index) % self.roles)
        while cursor.seen(k):
            k += self.roles
        return k

    def role_samples(self, role: int) -> Iterator[LineSample]:
        cursor, k = self.start, self.role_frontier(role)
        while True:
            if not cursor.seen(k):
                pair = self.renderer.render(k, self.counts)
                if pair is not None:
                    yield pair.sample(self.pairing)
            k += self.roles

    def __iter__(self) -> Iterator[LineSample]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if workers != self.workers:
            raise RuntimeError(f"SyntheticStream was built for {self.workers} loader workers, not {workers}.")
        done = self.start.batches
        left = self.batches_per_epoch - done % self.batches_per_epoch  # batches left in this epoch
        # Loader batch t comes from worker t % n; it must be rank batch done + t, i.e. role (done + t) % n.
        local_role = (done + worker) % workers
        mine = len(range(worker, left, workers))
        samples = self.role_samples(self.rank * workers + local_role)
        for _ in range(mine * self.batch_size):
            yield next(samples)


class StreamLoader(DataLoader):
    """The training DataLoader of the stream: hands the cursor to each new iterator, and moves it for the
    batches the training loop took (`commit`), never for batches fetched ahead but not trained on."""

    restores_itself = True  # ResumableTraining leaves it as it is

    def __init__(self, dataset: SyntheticStream, cursor: StreamCursor, num_workers: int = 0, **kwargs):
        super().__init__(dataset, batch_size=dataset.batch_size, shuffle=False, collate_fn=collate_lines,
                         num_workers=num_workers, persistent_workers=False,
                         multiprocessing_context=worker_start(dataset.world_size, num_workers), **kwargs)
        self.cursor = cursor
        self.pending: list[tuple[int, list[int]]] = []  # (rank batch number, sample indices), not committed

    def __iter__(self):
        self.pending = []
        start = StreamCursor()
        start.load_state_dict(self.cursor.state_dict())
        self.dataset.start = start
        return self._track(super().__iter__(), start.batches)

    def _track(self, iterator, first: int):
        for number, batch in enumerate(iterator, start=first):
            self.pending.append((number, [sample_index(key) for key in batch.target_keys]))
            yield batch

    def commit(self, taken: int | None = None) -> None:
        """Move the cursor past the first `taken` batches of the run (all fetched ones when None)."""
        keep = []
        for number, indices in self.pending:
            if taken is None or number < taken:
                self.cursor.consumed(indices, self.dataset.roles)
            else:
                keep.append((number, indices))
        self.pending = keep


class StreamView(Dataset):
    """Map-style view of the first `length` stream samples (previews, "seen" lines, the line reader's data):
    item i is the first kept sample at index i or after."""

    def __init__(self, renderer: StreamRenderer, length: int, pairing: str = "other_line"):
        self.renderer, self.length, self.pairing = renderer, int(length), pairing

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> LineSample:
        for k in range(int(i), int(i) + 10_000):
            pair = self.renderer.render(k)
            if pair is not None:
                return pair.sample(self.pairing)
        raise UserError("The stream dropped 10,000 samples in a row: check data.max_width and the fonts.")


# --- the data module ------------------------------------------------------------------------------------
def system_font_files(folders: list[str] | tuple[str, ...]) -> list[str]:
    """Every .ttf/.otf file under the given folders (missing folders are skipped with a note)."""
    files: list[str] = []
    for folder in folders:
        path = Path(str(folder)).expanduser()
        if not path.is_dir():
            log.info("data.system_font_dirs: %s is not a folder here; skipped.", folder)
            continue
        files += [str(p) for p in font_files(path)]
    return sorted(set(files))


class StreamDataModule(LineDataModule):
    """`LineDataModule` whose training split is the endless stream (`conf/data/synthetic_stream.yaml`).

    Validation and test are the fixed lines of the held-out font families (`lines_per_writer.val/test`);
    `lines_per_writer.train` is not used. `samples_per_epoch` sets the epoch length (progress bars,
    schedules, validation at epoch ends); the stream itself never repeats.
    """

    def __init__(self, samples_per_epoch: int = 100_000, system_font_dirs: list[str] | tuple[str, ...] = (),
                 too_wide: str = "shorten", font_cache: int = 256, **kwargs):
        super().__init__(**kwargs)
        if int(samples_per_epoch) < 1:
            raise UserError(f"data.samples_per_epoch must be at least 1; got {samples_per_epoch}.")
        fixed_lines_only(self, "the stream")
        self.samples_per_epoch = int(samples_per_epoch)
        data = self.data
        held_out = {w.font for split in ("val", "test") for w in data.writers[split]}
        train_fonts = {w.font for w in data.writers["train"]}
        if held_out & train_fonts:
            log.info("Too few font families to hold whole families out: the stream draws new hands of the "
                     "validation and test fonts too (their writers' parameters stay unseen).")
            held_out = set()
        families = [f for f in data.families if f.name not in held_out]
        held_paths = {Path(face.path).name for f in data.families if f.name in held_out for face in f.faces}
        known = {face.path for f in data.families for face in f.faces}
        extra = [p for p in system_font_files(list(system_font_dirs))
                 if p not in known and Path(p).name not in held_paths]
        self.renderer = StreamRenderer(
            self.seed, families, extra, held_out, data.source, data.train_ranges, data.words_per_line,
            data.max_width, too_wide, f"{data.fingerprint}", font_cache,
            alphabets={f.name: data._alphabets[f.name] for f in families})
        log.info("Synthetic stream: %d font families and %d extra font files; %d samples per epoch.",
                 len(families), len(extra), self.samples_per_epoch)
        self.cursor = StreamCursor()
        self.loader: StreamLoader | None = None
        self.counts: SkipCounts | None = None

    # --- splits -------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage, SPLITS):
            if split == "train":
                self.train_dataset = self.dataset("train")
                continue
            if split not in self.stores:
                self.stores[split] = cached_split(self.data, split, self.lines_per_writer[split], self.cache_dir)
            setattr(self, f"{split}_dataset", super().dataset(split))

    def prepare_data(self) -> None:
        if self.cache_dir is not None:
            for split in ("val", "test"):
                cached_split(self.data, split, self.lines_per_writer[split], self.cache_dir)

    def dataset(self, split: str):
        if split == "train":
            return StreamView(self.renderer, self.samples_per_epoch, self.pairing)
        return super().dataset(split)

    def train_dataloader(self) -> DataLoader:
        rank, world = rank_and_world(self.trainer)
        if self.counts is None or self.counts.table.shape[0] != self.num_workers + 1:
            self.counts = SkipCounts(SKIP_REASONS, self.num_workers)
        dataset = SyntheticStream(self.renderer, self.batch_size, self.samples_per_epoch, rank, world,
                                  self.num_workers, self.pairing, self.counts)
        self.loader = StreamLoader(dataset, self.cursor, num_workers=self.num_workers)
        return self.loader

    def batches_trained(self) -> int | None:
        """Training batches this rank has processed in the whole run (Lightning's count), or None outside fit."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return None
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)

    # --- what a checkpoint keeps --------------------------------------------------------------------------
    def skip_counts(self) -> dict[str, int]:
        return self.counts.totals() if self.counts is not None else {}

    def state_dict(self) -> dict:
        """The stream position of every rank (collective under DDP: every rank calls it while Lightning
        assembles a checkpoint)."""
        if self.loader is not None:
            self.loader.commit(self.batches_trained())
        state = self.cursor.state_dict()
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            frontier = torch.tensor(state["frontier"], dtype=torch.int64)
            rank, workers = trainer.global_rank, max(1, self.num_workers)
            mine = torch.full_like(frontier, -1)
            if state["modulus"] == trainer.world_size * workers:
                own = slice(rank * workers, (rank + 1) * workers)
                mine[own] = frontier[own]
            else:  # no batch was taken on this rank yet
                mine = frontier
            device = trainer.strategy.root_device
            gathered = trainer.strategy.all_gather(mine.to(device)).cpu()
            state["frontier"] = gathered.max(dim=0).values.tolist()
        return {"stream": state}

    def load_state_dict(self, state_dict: dict) -> None:
        if "stream" in state_dict:
            self.cursor.load_state_dict(state_dict["stream"])
            log.info("Resuming the synthetic stream at sample %d (%d batches taken).", self.cursor.next_index,
                     self.cursor.batches)
