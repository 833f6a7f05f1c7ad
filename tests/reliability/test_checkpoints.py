"""Checkpoint files: atomic writes, weights-only reads, one clear error for a wrong file, exact resume of the
data position inside an epoch."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from imuru_pl.callbacks import checkpoint as ckpt
from imuru_pl.callbacks.checkpoint import (
    AtomicCheckpointIO,
    EpochSeededSampler,
    ResumableLoader,
    check_matches,
    read_checkpoint,
)
from imuru_pl.errors import UserError


class Payload:
    """An arbitrary Python object: unpickling it means running the code its pickle names."""

    def __reduce__(self):
        return (print, ("this would run on load",))


def lightning_like(value: float) -> dict:
    return {
        "state_dict": {"w": torch.full((3,), value)},
        "pytorch-lightning_version": "2.6.6",
        "global_step": 7,
    }


def test_a_failure_in_the_middle_of_a_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(lightning_like(1.0), last)
    real_save = torch.save

    def torn_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")  # what a kill or a full disk leaves behind
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", torn_save)
    with pytest.raises(OSError):
        io.save_checkpoint(lightning_like(2.0), last)
    monkeypatch.setattr(ckpt.torch, "save", real_save)

    assert torch.load(last, weights_only=True)["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"], "the temporary file must be cleaned up"
    io.save_checkpoint(lightning_like(3.0), last)  # and the next save replaces it whole
    assert read_checkpoint(last)["state_dict"]["w"].tolist() == [3.0, 3.0, 3.0]


def test_a_checkpoint_with_pickled_objects_is_refused_without_running_them(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    torch.save({**lightning_like(1.0), "extra": Payload()}, path)
    with pytest.raises(UserError, match="pickled Python objects") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)
    with pytest.raises(pickle.UnpicklingError):  # the trainer's own reads are weights-only too
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert "this would run on load" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "Checkpoint not found"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("not a checkpoint"), "not a PyTorch checkpoint"),
        (lambda p: torch.save({"w": torch.zeros(2)}, p), "not a Lightning training checkpoint"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["missing", "zero-bytes", "text-file", "plain-state-dict", "directory"],
)
def test_a_wrong_checkpoint_file_is_one_user_error(tmp_path, make, message):
    path = tmp_path / "x.ckpt"
    make(path)
    with pytest.raises(UserError, match=message) as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)


def test_a_checkpoint_of_another_model_is_refused():
    module = torch.nn.Linear(4, 2)
    other = {"state_dict": torch.nn.Linear(4, 3).state_dict(), "pytorch-lightning_version": "2.6.6"}
    with pytest.raises(UserError, match="checkpoint of another model"):
        check_matches(other, module, "other.ckpt")
    check_matches({"state_dict": module.state_dict()}, module, "same.ckpt")  # the right one passes


def test_real_training_checkpoints_hold_only_tensors_and_plain_containers(trained_run):
    """What Lightning, the callbacks and the data module put into our checkpoints loads weights-only."""
    files = sorted((trained_run / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in files} >= {"last.ckpt"} and any(p.name.startswith("best-") for p in files)
    for path in files:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] > 0 and checkpoint["optimizer_states"]
        assert "ResumableTraining" in checkpoint["callbacks"]
    # Exports are safetensors (model and VAE), no pickles anywhere.
    export = trained_run / "model"
    assert load_file(export / "model.safetensors") and load_file(
        export / "vae" / "diffusion_pytorch_model.safetensors"
    )
    assert (
        not list(export.rglob("*.bin"))
        and not list(export.rglob("*.pt"))
        and not list(export.rglob("*.ckpt"))
    )


def test_the_resumable_loader_continues_an_epoch_where_it_stopped():
    data = list(range(22))
    order = [batch.tolist() for batch in ResumableLoader(data, batch_size=4, shuffle=True, seed=5)]
    flat = [i for batch in order for i in batch]
    assert sorted(flat) == data and order != [data[i : i + 4] for i in range(0, 22, 4)]

    first = ResumableLoader(data, batch_size=4, shuffle=True, seed=5)
    taken = []
    for batch in first:
        taken.append(batch.tolist())
        if len(taken) == 2:
            break
    state = first.state_dict()
    assert state == {"batches": 2}

    resumed = ResumableLoader(data, batch_size=4, shuffle=True, seed=5)
    resumed.load_state_dict(state)
    rest = [batch.tolist() for batch in resumed]
    assert taken + rest == order, "the resumed epoch must hand out exactly the batches not yet seen"
    assert resumed.state_dict() == {"batches": len(order)}
    assert [b.tolist() for b in resumed] == order, "the next epoch starts from the beginning again"

    sampler = EpochSeededSampler(data, seed=5)
    sampler.set_epoch(1)
    assert list(sampler) != flat, "every epoch has its own order"


def test_wrap_keeps_the_loader_settings_and_refuses_nothing():
    loader = DataLoader(list(range(10)), batch_size=3, shuffle=True, drop_last=True, collate_fn=list)
    wrapped = ResumableLoader.wrap(loader, seed=1)
    assert isinstance(wrapped, ResumableLoader) and isinstance(wrapped.sampler, EpochSeededSampler)
    assert (wrapped.batch_size, wrapped.drop_last, wrapped.collate_fn, len(wrapped)) == (3, True, list, 3)
    ordered = ResumableLoader.wrap(DataLoader(list(range(5)), batch_size=2), seed=1)
    assert [b.tolist() for b in ordered] == [[0, 1], [2, 3], [4]]


def test_resolve_last_finds_the_newest_last_checkpoint(tmp_path):
    (tmp_path / "a").mkdir()
    old, new = tmp_path / "a" / "last.ckpt", tmp_path / "a" / "last-v1.ckpt"
    old.write_bytes(b"1")
    new.write_bytes(b"2")
    os.utime(old, (1, 1))
    assert ckpt.last_checkpoint([tmp_path / "a", tmp_path / "missing"]) == new
    assert ckpt.last_checkpoint([tmp_path / "missing"]) is None


def test_atomic_save_writes_beside_the_target(tmp_path, monkeypatch):
    """The temporary file lives in the checkpoint's own directory (a rename there is atomic) and is synced."""
    seen: list[Path] = []
    real_replace = ckpt.os.replace

    def spy(src, dst):
        seen.append(Path(src))
        return real_replace(src, dst)

    synced: list[int] = []
    real_fsync = ckpt.os.fsync
    monkeypatch.setattr(ckpt.os, "replace", spy)
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    ckpt.atomic_torch_save({"w": torch.ones(1)}, tmp_path / "deep" / "last.ckpt")
    assert seen and seen[0].parent == tmp_path / "deep" and synced


def test_each_rank_gets_its_own_rng_state_back():
    """Rank 1 restores row 1 of the gathered states (a view of it crashes torch.set_rng_state)."""
    torch.manual_seed(1)
    row0 = torch.get_rng_state()
    torch.manual_seed(2)
    row1 = torch.get_rng_state()
    callback = ckpt.ResumableTraining(seed=0)
    callback.load_state_dict({"world_size": 2, "rng": {"torch": torch.stack([row0, row1])}, "loader": None})

    class Rank1:
        world_size, global_rank = 2, 1

    torch.manual_seed(3)
    callback.on_train_batch_start(Rank1(), None, None, 0)
    assert torch.equal(torch.get_rng_state(), row1)
    callback.on_train_batch_start(Rank1(), None, None, 1)  # only once, at the first batch after a resume
    assert torch.equal(torch.get_rng_state(), row1)
