"""The train_vae task end to end on a very small synthetic set, and `ensure_vae` for the Imuru stage."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from imuru_pl.errors import UserError
from imuru_pl.models.vae import LineVAE
from imuru_pl.tasks import train_vae

CONF = Path(__file__).resolve().parents[2] / "conf"


def small_cfg(output_dir: Path) -> DictConfig:
    overrides = [
        "experiment=vae",
        "data.fonts=[fontpkg_kalam,fontpkg_delius,fontpkg_caveat,fontpkg_satisfy]",
        "data.writers_per_font=1",
        "data.lines_per_writer={train: 8, val: 4, test: 1}",
        "data.max_width=256",
        "vae.arch.block_out_channels=[8,8,16,16]",
        "vae.arch.norm_num_groups=4",
        "vae.train.batch_size=4",
        "vae.train.max_steps=3",
        "vae.train.image_every_n_steps=2",
        "vae.train.eval_lines=4",
        "vae.train.stop_lines=8",
    ]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("run", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[DictConfig, Path, dict]:
    out = tmp_path_factory.mktemp("train_vae")
    cfg = small_cfg(out)
    return cfg, out, train_vae.run(cfg)


def test_run_saves_a_loadable_vae_and_its_figures(trained):
    cfg, out, result = trained
    vae = LineVAE.from_pretrained(out / "vae")
    assert vae.padding_latent is not None and vae.stop_threshold is not None
    assert vae.autoencoder.config.block_out_channels == [8, 8, 16, 16]
    metrics = json.loads((out / "vae_metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["heldout"]["lines"] == 4
    assert metrics["heldout"]["psnr"] > 0 and 0 < metrics["heldout"]["l1"] <= 2
    assert 0 <= metrics["stop_heldout"]["balanced_accuracy"] <= 1
    assert metrics["stop"]["stop_threshold"] == vae.stop_threshold
    assert sorted(p.name for p in (out / "vae_samples").glob("*.png"))[-1] == "reconstructions_step000003.png"
    assert list((out / "tensorboard" / "vae").glob("events.out.tfevents.*"))
    assert result["heldout"] == metrics["heldout"]


def test_ensure_vae_reuses_a_finished_vae(trained):
    cfg, out, _ = trained
    weights = out / "vae" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert train_vae.ensure_vae(cfg, out) == out / "vae"
    assert weights.stat().st_mtime_ns == before  # nothing was trained again


def test_ensure_vae_uses_a_pretrained_directory(trained, tmp_path):
    cfg, out, _ = trained
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.vae.pretrained = str(out / "vae")
    assert train_vae.ensure_vae(cfg, tmp_path) == out / "vae"
    assert not (tmp_path / "vae").exists()
    with open_dict(cfg):
        cfg.vae.pretrained = str(tmp_path / "missing")
    with pytest.raises(UserError, match="missing"):
        train_vae.ensure_vae(cfg, tmp_path)


def test_init_from_starts_the_stage_from_a_saved_vae_and_trains_it_further(trained, tmp_path):
    cfg, out, _ = trained
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.vae.init_from = str(out / "vae")
        cfg.vae.arch.block_out_channels = [4, 4, 8, 8]  # unused: the saved VAE's architecture is trained on
        cfg.paths.output_dir = str(tmp_path)
    saved = LineVAE.from_pretrained(out / "vae").state_dict()
    start = train_vae.initial_vae(cfg).state_dict()
    assert start.keys() == saved.keys() and all(start[k].equal(saved[k]) for k in saved)
    train_vae.run(cfg)
    further = LineVAE.from_pretrained(tmp_path / "vae")
    assert further.autoencoder.config.block_out_channels == [8, 8, 16, 16]
    assert json.loads((tmp_path / "vae_metrics.json").read_text())["steps"] == 3
    moved = [k for k, v in further.state_dict().items() if v.is_floating_point() and not v.equal(saved[k])]
    assert moved  # the three steps changed the saved weights


def test_init_from_a_bad_directory_or_beside_pretrained_is_one_sentence(trained, tmp_path):
    cfg, out, _ = trained
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.vae.init_from = str(tmp_path / "missing")
    with pytest.raises(UserError, match="missing"):
        train_vae.initial_vae(cfg)
    with open_dict(cfg):
        cfg.vae.init_from, cfg.vae.pretrained = str(out / "vae"), str(out / "vae")
    with pytest.raises(UserError, match="both set"):
        train_vae.ensure_vae(cfg, tmp_path)
    assert not (tmp_path / "vae").exists()
