"""Training on streamed data through run.py: on WebDataset shards with a corrupt sample and a truncated shard
the run completes, the bad ones skipped and counted (log and TensorBoard); `experiment=imuru_small
trainer=cpu debug=fdr` completes on the synthetic stream and on shards."""

from __future__ import annotations

from cli_helpers import corrupt_shard_copies
from reliability_helpers import TINY, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# TINY's model, VAE and trainer; its data keys are the synthetic data's, so shards get their own.
MODEL_AND_TRAINER = [o for o in TINY if not o.startswith("data.")]


def test_training_on_shards_skips_a_corrupt_sample_and_a_truncated_shard_and_counts_them(shards, tmp_path):
    urls = [*corrupt_shard_copies(shards, tmp_path / "bad"), str(shards / "shard-000002.tar")]
    run_dir = tmp_path / "run"
    result = run_cli(*MODEL_AND_TRAINER, "data=webdataset", f"data.urls=[{','.join(urls)}]",
                     f"data.val_urls={shards / 'shard-000003.tar'}", "data.batch_size=4", "data.val_samples=4",
                     "data.test_samples=4", "data.samples_per_epoch=24", "data.sample_shuffle=8",
                     "callbacks.data_skip_counts.every_n_steps=2", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "Skipped corrupt sample: bad-000000.tar:000000000001" in log
    assert "corrupt sample" in log.split("Training samples left out (or shortened) by the data: ")[-1]
    assert (run_dir / "model" / "model.safetensors").is_file() and (run_dir / "heldout" / "grid.png").is_file()
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert events.Scalars("data/skipped_corrupt_sample")[-1].value >= 1
    assert events.Scalars("data/skipped_shard_error")[-1].value >= 1


def test_imuru_small_fast_dev_run_on_the_stream_and_on_shards(shards, tmp_path):
    stream = run_cli("experiment=imuru_small", "trainer=cpu", "debug=fdr", f"hydra.run.dir={tmp_path / 'stream'}")
    assert stream.returncode == 0, stream.stderr[-3000:]
    assert "Synthetic stream:" in (tmp_path / "stream" / "train.log").read_text()
    # the same on shards, with the reference VAE the first run trained (one step) rather than a second one
    on_shards = run_cli("experiment=imuru_small", "trainer=cpu", "debug=fdr", "data=webdataset",
                        f"data.urls='{shards}/shard-{{000000..000002}}.tar'", f"data.val_urls={shards}/shard-000003.tar",
                        f"vae.pretrained={tmp_path / 'stream' / 'vae'}", f"hydra.run.dir={tmp_path / 'shards'}")
    assert on_shards.returncode == 0, on_shards.stderr[-3000:]
    assert "WebDataset shards: 3 train, 1 validation, 1 test." in (tmp_path / "shards" / "train.log").read_text()
