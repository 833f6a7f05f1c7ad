"""Streamed data under DDP: two CPU processes (gloo, torch.distributed) read the synthetic stream and the
WebDataset shards, each with two loader workers; the ranks' sample keys are disjoint and together they are
the samples one process reads in the same epoch. And `trainer=ddp` through run.py trains on the stream, its
checkpoint holding both ranks' positions."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from reliability_helpers import TINY, run_cli

from cli_helpers import REPO, SHARDS, STREAM

BATCH = 3  # every worker of every rank reads exactly one pass over its shard (SHARDS[1] samples)


def stream_module():
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("run", overrides=[*STREAM, f"data.batch_size={BATCH}", "data.num_workers=2",
                                        f"data.samples_per_epoch={SHARDS[0] * SHARDS[1]}"])
    return instantiate(cfg.data)


def shard_module(shards: Path):
    from imuru_pl.data.shards import ShardDataModule

    return ShardDataModule(urls=str(shards / "shard-{000000..000003}.tar"), val_urls=str(shards / "shard-000000.tar"),
                           batch_size=BATCH, num_workers=2, samples_per_epoch=SHARDS[0] * SHARDS[1])


def epoch_keys(datamodule) -> list[str]:
    return [key for batch in datamodule.train_dataloader() for key in batch.target_keys]


def read_as_rank(rank: int, world: int, port: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        keys = {"stream": epoch_keys(stream_module()), "shards": epoch_keys(shard_module(Path(shards)))}
        Path(out, f"rank{rank}.json").write_text(json.dumps(keys))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ranks_read_disjoint_samples_whose_union_is_one_processs_epoch(shards, tmp_path):
    mp.start_processes(read_as_rank, args=(2, free_port(), str(shards), str(tmp_path)), nprocs=2,
                       start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = {"stream": epoch_keys(stream_module()), "shards": epoch_keys(shard_module(shards))}
    for kind in ("stream", "shards"):
        a, b = (set(rank[kind]) for rank in ranks)
        assert len(a) == len(ranks[0][kind]) == SHARDS[0] * SHARDS[1] // 2, f"{kind}: a rank repeats a sample"
        assert not a & b, f"{kind}: two ranks read the same sample"
        assert a | b == set(single[kind]), f"{kind}: the ranks together are not one process's epoch"


def test_ddp_training_on_the_stream_keeps_both_ranks_positions(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*TINY, "data=synthetic_stream", "data.samples_per_epoch=48", "trainer=ddp",
                     "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "All 2 ranks end training with identical weights." in (run / "train.log").read_text()
    stream = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["StreamDataModule"]["stream"]
    # 6 steps of 4 samples per rank, no loader workers: rank 0 trains on k = 0, 2, ..., rank 1 on 1, 3, ...
    assert stream["modulus"] == 2 and stream["batches"] == 6 and all(f >= 24 for f in stream["frontier"])
