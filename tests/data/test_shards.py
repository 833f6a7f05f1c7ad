"""WebDataset shards (`data=webdataset`) and the shard writer (`task=render_shards`), with the real
`webdataset` library: written shards read back as the stream rendered them, the reference's own reading
calls find its keys, patterns that name nothing stop before anything runs, and a corrupt sample or shard is
skipped and counted."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from cli_helpers import REPO, SHARDS, STREAM, corrupt_shard_copies, run_cli
from imuru_pl.data.shards import ShardDataModule, expand_patterns, shard_sample_key
from imuru_pl.errors import UserError



def stream_module():
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        cfg = compose("run", overrides=[*STREAM, "data.latent_cache=false", "data.curriculum.steps=0"])
    return instantiate(cfg.data)


def module(shards: Path, **kwargs) -> ShardDataModule:
    settings = dict(urls=str(shards / "shard-{000000..000002}.tar"), val_urls=str(shards / "shard-000003.tar"),
                    batch_size=4, samples_per_epoch=16, sample_shuffle=0, shard_shuffle=0, val_samples=4)
    return ShardDataModule(**{**settings, **kwargs})


def test_render_shards_writes_the_font_square_layout_and_a_manifest(shards):
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert names == [f"shard-{j:06d}.tar" for j in range(SHARDS[0])]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["samples"] == sum(s["samples"] for s in manifest["shards"]) == SHARDS[0] * SHARDS[1]
    assert manifest["seed"] == 1234 and manifest["fonts"] and manifest["held_out_families"]
    assert not set(manifest["fonts"]) & set(manifest["held_out_families"])
    with tarfile.open(shards / names[0]) as tar:
        members = tar.getnames()
    assert members[:4] == ["000000000000.gen.bw.png", "000000000000.gen.rgb.png", "000000000000.json",
                           "000000000000.style.rgb.png"]
    assert not list(shards.glob("*.partial"))


def test_shards_read_back_as_the_stream_rendered_them(shards):
    datamodule = module(shards)
    datamodule.setup("fit")
    renderer = stream_module().renderer
    seen = 0
    for batch in datamodule.train_dataloader():
        for i, key in enumerate(batch.target_keys):
            pair = renderer.render(int(shard_sample_key(key))).sample()
            width = pair["target"].shape[-1]
            assert batch.texts[i] == pair["text"] and batch.style_texts[i] == pair["style_text"]
            assert torch.allclose(batch.target[i, :, :, :width], pair["target"], atol=1e-6)
            assert torch.allclose(batch.style[i, :, :, : pair["style"].shape[-1]], pair["style"], atol=1e-6)
            seen += 1
    assert seen == 16 and datamodule.skip_counts() == dict.fromkeys(datamodule.skip_counts(), 0)
    assert len(datamodule.val_dataset) == 4 and datamodule.writers("val")


def test_the_reference_loader_calls_read_the_shards(shards):
    import webdataset as wds

    # custom_datasets/load_hf_dataset.py of the reference: the same calls and key names
    dataset = wds.WebDataset(str(shards / "shard-{000000..000003}.tar"), nodesplitter=wds.split_by_node,
                             shardshuffle=100).decode("pil")
    samples = list(dataset)
    assert len(samples) == SHARDS[0] * SHARDS[1]
    for sample in samples[:3]:
        style, gen = sample["style.rgb.png"].convert("RGB"), sample["gen.bw.png"].convert("RGB")
        assert style.height == gen.height == 64
        assert isinstance(sample["json"]["writer_id"], int) and sample["json"]["gen_text"]
        assert sample["json"]["style_text"] != sample["json"]["gen_text"]


def test_a_corrupt_sample_and_a_truncated_shard_are_skipped_and_counted(shards, tmp_path):
    datamodule = module(shards, urls=corrupt_shard_copies(shards, tmp_path / "bad"), samples_per_epoch=8)
    keys = [k for batch in datamodule.train_dataloader() for k in batch.target_keys]
    assert len(keys) == 8 and not any(":000000000001/" in k for k in keys)
    counts = datamodule.skip_counts()
    assert counts["corrupt_sample"] >= 1 and counts["shard_error"] >= 1, counts


def test_patterns_that_name_no_shard_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="matches no shard file"):
        expand_patterns(str(tmp_path / "{000000..000009}.tar"), "data.urls")
    with pytest.raises(UserError, match="data.urls is not set"):
        expand_patterns(None, "data.urls")
    assert expand_patterns("pipe:cat a.tar", "data.urls") == ["pipe:cat a.tar"]
    result = run_cli("task=train", "data=webdataset", f"data.urls='{tmp_path}/x-{{0..3}}.tar'",
                     f"data.val_urls={tmp_path}/v.tar", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "matches no shard file" in result.stdout + result.stderr
    assert not (tmp_path / "run" / "vae").exists(), "refused before the VAE stage"


def test_render_shards_refuses_bad_settings_and_an_interrupted_run_keeps_its_finished_shards(shards, tmp_path):
    import shutil

    missing = run_cli("task=render_shards", *STREAM, f"hydra.run.dir={tmp_path / 'r0'}")
    assert missing.returncode == 2 and "needs out=" in missing.stdout + missing.stderr
    done = run_cli("task=render_shards", *STREAM, f"out={shards}", f"hydra.run.dir={tmp_path / 'r1'}")
    assert done.returncode == 2 and "already holds a finished set" in done.stdout + done.stderr
    bad = run_cli("task=render_shards", *STREAM, f"out={tmp_path / 'x'}", "shards.prefix=a.b",
                  f"hydra.run.dir={tmp_path / 'r2'}")
    assert bad.returncode == 2 and "shards.prefix" in bad.stdout + bad.stderr and not (tmp_path / "x").exists()
    # an interrupted run: its manifest never written, one shard half-written
    again = tmp_path / "again"
    shutil.copytree(shards, again)
    (again / "manifest.json").unlink()
    (again / "shard-000003.tar").rename(again / "shard-000003.tar.partial")
    (again / ".progress" / "shard-000003.tar.json").unlink()
    result = run_cli("task=render_shards", *STREAM, f"out={again}", f"shards.samples={SHARDS[0] * SHARDS[1]}",
                     f"shards.per_shard={SHARDS[1]}", "shards.processes=2", f"hydra.run.dir={tmp_path / 'r3'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Keeping 3 shards" in result.stdout + result.stderr
    assert (again / "shard-000003.tar").read_bytes() == (shards / "shard-000003.tar").read_bytes()
    assert json.loads((again / "manifest.json").read_text())["samples"] == SHARDS[0] * SHARDS[1]
