"""Checkpoints that survive a kill and resume exactly where training stopped.

Three pieces, all configured in `conf/callbacks/default.yaml`:

- `AtomicModelCheckpoint`: Lightning's ModelCheckpoint whose trainer writes through `AtomicCheckpointIO`
  (temporary file in the checkpoint's own directory, fsync, `os.replace`), so a kill during a save leaves
  the previous file intact, and reads checkpoints with `weights_only=True` only.
- `ResumableTraining`: stores every rank's torch RNG state in checkpoints and gives the training loader
  a per-epoch seeded order plus its position inside the epoch, so a resumed run draws the same batches
  and the same noise as an uninterrupted one.
- `resolve_ckpt_path` / `read_checkpoint`: turn `ckpt_path=` into a checked file, or one `UserError`.

Lightning 2.6 on its own restores the global step, optimiser, schedulers and loop counters, but with a
plain DataLoader it restarts a mid-epoch resume from a new shuffle of the full dataset (and cuts that
epoch short by the batches already counted), and its own atomic save stages the file in the system
temporary directory without fsync. The pieces here close those gaps.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import to_absolute_path
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from imuru_pl.errors import UserError

log = logging.getLogger(__name__)


# --- writing and reading checkpoint files ------------------------------------------------------------
def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: flush the directory entry too (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file beside `path`, fsync, then rename over it: never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoint files written atomically and read without unpickling arbitrary objects."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options.")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        # Whatever the caller asks, never fall back to full unpickling: it can run arbitrary code.
        return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)


def install_atomic_io(trainer: L.Trainer) -> None:
    """Swap the strategy's default TorchCheckpointIO for `AtomicCheckpointIO` (other plugins stay)."""
    strategy = trainer.strategy
    current = strategy.checkpoint_io
    if isinstance(current, AtomicCheckpointIO):
        return
    if type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    else:
        log.warning("Checkpoint plugin %s is kept as configured; its saves are not made atomic here.",
                    type(current).__name__)


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose files are written atomically (see `AtomicCheckpointIO`).

    With `save_last`, `last.ckpt` is also written when training ends between two periodic saves, so a
    finished run can be resumed to train longer (`resume=<run dir> trainer.max_steps=...`).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        install_atomic_io(trainer)  # before Lightning reads ckpt_path, so loading is weights-only too
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if (self.save_last and not trainer.fast_dev_run and trainer.global_step > 0
                and self._last_global_step_saved != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint file loaded weights-only (memory-mapped), or a one-sentence UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Checkpoint not found: {path}.")
    if path.is_dir():
        raise UserError(f"{path} is a directory; ckpt_path takes a .ckpt file (or 'last').")
    if path.stat().st_size == 0:
        raise UserError(f"Checkpoint {path} is empty (0 bytes).")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a PyTorch checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise UserError(f"{path} holds pickled Python objects besides tensors and is refused, because "
                            "loading it could run arbitrary code.") from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}).") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}).") from None
    required = {"state_dict", "pytorch-lightning_version"}
    if not isinstance(checkpoint, dict) or not required <= checkpoint.keys():
        raise UserError(f"{path} is not a Lightning training checkpoint (it has no state_dict and version).")
    return checkpoint


def precheck_ckpt_path(value: str | os.PathLike | None) -> None:
    """Fail fast on a ckpt_path file that is missing or unreadable, before any slow work starts."""
    text = "" if value is None else str(value).strip()
    if text and text not in ("None", "null", "last", "best", "hpc", "registry"):
        read_checkpoint(to_absolute_path(text))


def check_matches(checkpoint: dict[str, Any], module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose weights do not fit `module` (another model, or other sizes)."""
    expected = module.state_dict()
    state = checkpoint["state_dict"]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    resized = sorted(k for k in set(expected) & set(state)
                     if tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape))
    if missing or unexpected or resized:
        example = (missing or unexpected or resized)[0]
        raise UserError(
            f"{path} is a checkpoint of another model: {len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected and {len(resized)} of other sizes (e.g. {example!r}); "
            "resume with the settings it was trained with."
        )


def last_checkpoint(directories: list[str | os.PathLike]) -> Path | None:
    """The newest `last*.ckpt` in the checkpoint directories, as Lightning's ckpt_path='last' picks it."""
    found = [p for d in directories if d and Path(d).is_dir() for p in Path(d).glob("last*.ckpt")
             if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_ckpt_path(value: str | os.PathLike | None, module: torch.nn.Module,
                      trainer: L.Trainer) -> str | None:
    """`ckpt_path` as a checked file path: None, 'last' (newest last.ckpt of the run), or a file."""
    if value is None or str(value).strip() in ("", "None", "null"):
        return None
    text = str(value).strip()
    if text == "last":
        directories = [getattr(cb, "dirpath", None) for cb in trainer.checkpoint_callbacks]
        path = last_checkpoint(directories)
        if path is None:
            where = ", ".join(str(d) for d in directories if d) or "(no checkpoint callback is configured)"
            log.warning("ckpt_path=last: no last.ckpt in %s yet; training starts from step 0.", where)
            return None
    elif text in ("best", "hpc", "registry"):
        raise UserError(f"ckpt_path={text} is not supported for training; give a .ckpt file or 'last'.")
    else:
        path = Path(to_absolute_path(text))  # relative to where the command was started
    checkpoint = read_checkpoint(path)
    check_matches(checkpoint, module, path)
    log.info("Resuming from %s (global step %s, epoch %s).", path, checkpoint.get("global_step"),
             checkpoint.get("epoch"))
    return str(path)


# --- data position inside an epoch -------------------------------------------------------------------
class EpochSeededSampler(RandomSampler):
    """A shuffle that depends only on (seed, epoch), not on the global RNG: a resumed epoch gets it again.

    It subclasses RandomSampler so that under DDP Lightning replaces it by its DistributedSampler (seeded by
    the run's seed, also deterministic per epoch).
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class _SkipFirstBatches(Sampler):
    """Wraps a batch sampler; the next iteration drops `pending` index batches (indices only, no data)."""

    def __init__(self, batches):
        self.batches = batches
        self.pending = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        skip, self.pending = self.pending, 0
        return itertools.islice(iter(self.batches), skip, None)


class ResumableLoader(DataLoader):
    """DataLoader that reports how many batches of the current epoch it handed out and can skip them again.

    Lightning saves `state_dict()` in every checkpoint (fit loop, "combined_loader") and calls
    `load_state_dict()` on resume before iterating, so the resumed epoch continues with the next unseen batch.
    """

    def __init__(self, dataset, batch_size: int | None = 1, shuffle: bool | None = None, sampler=None, *,
                 seed: int = 0, **kwargs):
        if shuffle and sampler is None and kwargs.get("batch_sampler") is None:
            sampler, shuffle = EpochSeededSampler(dataset, seed), None
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, **kwargs)
        self.seed = int(seed)  # an attribute, so Lightning can rebuild the loader with a DistributedSampler
        self._consumed = 0
        self._restored = False

    @property
    def _index_sampler(self):
        skipper = self.__dict__.get("_skipper")
        inner = super()._index_sampler
        if skipper is None or skipper.batches is not inner:
            skipper = _SkipFirstBatches(inner)
            self.__dict__["_skipper"] = skipper
        return skipper

    def __iter__(self):
        self._consumed = self._index_sampler.pending  # read before the new iterator takes it
        return self._counted(super().__iter__())

    def _counted(self, iterator) -> Iterator:
        for batch in iterator:
            self._consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches": int(self._consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._restored = True
        done = int(state.get("batches", 0))
        # A checkpoint taken on an epoch's last batch resumes with a fresh epoch: nothing to skip.
        self._index_sampler.pending = done if 0 < done < len(self) else 0
        if self._index_sampler.pending:
            log.info("Resuming mid-epoch: skipping the %d batches of this epoch already trained on.", done)

    @classmethod
    def wrap(cls, loader: DataLoader, seed: int) -> DataLoader:
        """The same loader made resumable; loaders with a custom batch sampler are returned unchanged."""
        if isinstance(loader, cls) or not isinstance(loader, DataLoader) or getattr(loader, "restores_itself", False):
            return loader  # (a loader that keeps its own position, e.g. the synthetic stream's, stays as it is)
        if loader.batch_size is None or type(loader.batch_sampler) is not BatchSampler:
            log.info("The training loader uses its own batch sampler: a mid-epoch resume restarts its epoch.")
            return loader
        shuffled = type(loader.sampler) is RandomSampler and not loader.sampler.replacement
        if not shuffled and type(loader.sampler) is not SequentialSampler:
            log.info("The training loader uses its own sampler: a mid-epoch resume restarts its epoch.")
            return loader
        kwargs: dict[str, Any] = {
            "batch_size": loader.batch_size, "shuffle": shuffled, "num_workers": loader.num_workers,
            "collate_fn": loader.collate_fn, "pin_memory": loader.pin_memory, "drop_last": loader.drop_last,
            "timeout": loader.timeout, "worker_init_fn": loader.worker_init_fn,
            "multiprocessing_context": loader.multiprocessing_context, "generator": loader.generator,
            "persistent_workers": loader.persistent_workers, "pin_memory_device": loader.pin_memory_device,
            "in_order": getattr(loader, "in_order", True),
        }
        if loader.num_workers > 0:
            kwargs["prefetch_factor"] = loader.prefetch_factor
        return cls(loader.dataset, seed=seed, **kwargs)


# --- RNG states and the loader, put together ---------------------------------------------------------
def _rng_states() -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


class ResumableTraining(L.Callback):
    """Makes a resumed run continue as the uninterrupted one would: same batches, same random noise.

    - the datamodule's training loader becomes a `ResumableLoader` (seeded order per epoch, saved position);
    - every rank's torch RNG state (CPU and current CUDA device) is gathered into each checkpoint and put
      back just before the first training batch after a resume (Python's and NumPy's global RNGs are not:
      the training step does not draw from them).

    The loader position is also kept here because Lightning 2.6 does not always hand it to the loader: when
    `configure_optimizers` reads `trainer.estimated_stepping_batches` (our cosine schedule does), the training
    loader is set up before the checkpoint's loop state is read, and the loader state is then never loaded.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._trainer: L.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        datamodule = trainer.datamodule
        if stage != "fit" or datamodule is None or getattr(datamodule, "_resumable_loader", False):
            return
        make_loader = datamodule.train_dataloader
        seed = self.seed

        def train_dataloader() -> DataLoader:
            return ResumableLoader.wrap(make_loader(), seed)

        datamodule.train_dataloader = train_dataloader
        datamodule._resumable_loader = True

    @staticmethod
    def _train_loader(trainer: L.Trainer | None) -> ResumableLoader | None:
        combined = getattr(trainer.fit_loop, "_combined_loader", None) if trainer is not None else None
        loaders = combined.flattened if combined is not None else []
        return loaders[0] if len(loaders) == 1 and isinstance(loaders[0], ResumableLoader) else None

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        states = _rng_states()
        world = trainer.world_size if trainer is not None else 1
        if world > 1:
            # Every rank calls this while Lightning assembles the checkpoint, so the gather is collective.
            device = trainer.strategy.root_device
            states = {k: trainer.strategy.all_gather(v.to(device)).cpu() for k, v in states.items()}
        else:
            states = {k: v.unsqueeze(0) for k, v in states.items()}
        loader = self._train_loader(trainer)
        position = loader.state_dict() if loader is not None else None
        return {"world_size": world, "rng": states, "loader": position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Position the training loader if Lightning did not, before the first batch is drawn."""
        if self._pending is None or not self._pending.get("loader"):
            return
        loader = self._train_loader(trainer)
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if loader is None or loader._restored:
            return
        loader.load_state_dict(self._pending["loader"])
        if fetcher is None:
            log.warning("Could not re-position the training loader: the resumed epoch restarts its order.")
            return
        _set_sampler_epoch(loader, trainer.fit_loop.epoch_progress.current.processed)
        iter(fetcher)  # a new iterator that starts at the saved position (no batch was drawn yet)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        if int(state.get("world_size", 1)) != trainer.world_size:
            log.warning("The checkpoint was written by %s processes and this run has %d: random noise will "
                        "differ from an uninterrupted run.", state.get("world_size"), trainer.world_size)
            return
        rank = trainer.global_rank
        rng = state.get("rng", {})
        # clone(): set_rng_state reads a row of the (world, n) tensor from the start of its storage otherwise.
        if "torch" in rng:
            torch.set_rng_state(rng["torch"][rank].to(torch.uint8).cpu().clone())
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"][rank].to(torch.uint8).cpu().clone())
