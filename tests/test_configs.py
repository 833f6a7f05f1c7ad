"""Every experiment composes, its data module and trainer build; the command line prints config and help."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from imuru_pl.precision import resolve_auto

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
# Small enough to build in a second; applied to whichever of these keys the experiment's data config has.
SMALL_DATA = {
    "fonts": ["fontpkg_caveat", "fontpkg_delius", "fontpkg_kalam", "fontpkg_satisfy"],
    "writers_per_font": 1,
    "lines_per_writer": {"train": 3, "val": 2, "test": 2},
    "num_workers": 0,
    "val_fonts": 1,  # held-out families pinned by name (legible_fonts) are not among these four
    "test_fonts": 2,
}


@pytest.fixture(autouse=True)
def project_root(monkeypatch):
    monkeypatch.setenv("IMURU_PL_ROOT", str(ROOT))


def handwriting_folder(root: Path) -> Path:
    """A small folder dataset in the HWD layout, rendered from synthetic writers (for data=folder)."""
    from imuru_pl.data.datamodule import LineDataModule
    from imuru_pl.data.image import tensor_to_image
    from imuru_pl.metrics.folders import write_folder
    from imuru_pl.metrics.items import Item

    synthetic = LineDataModule(**SMALL_DATA)
    items = [Item(w.id, tensor_to_image(synthetic.line(w, i).clean), synthetic.line(w, i).text)
             for w in synthetic.writers("train") for i in range(3)]
    return write_folder(root, items)


def compose_experiment(name: str, output_dir: Path, overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("run", overrides=[f"experiment={name}", f"paths.output_dir={output_dir}", *overrides])


def test_experiments_are_found():
    assert "demo" in EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_its_data_and_trainer_build(name, tmp_path, request):
    cfg = compose_experiment(name, tmp_path)
    OmegaConf.resolve(cfg.data)
    OmegaConf.resolve(cfg.trainer)
    assert cfg.task_name and cfg.data.batch_size >= 1 and cfg.data.eval_batch_size >= 1
    with open_dict(cfg):
        for key, value in SMALL_DATA.items():
            if key in cfg.data:
                cfg.data[key] = value
        if "root" in cfg.data and not cfg.data.root:
            cfg.data.root = str(handwriting_folder(tmp_path / "folder"))
        if "urls" in cfg.data and not cfg.data.urls:  # WebDataset shards (finetune_pairs): the test's own
            shards = request.getfixturevalue("shards")
            cfg.data.urls, cfg.data.val_urls = str(shards / "shard-{000000..000002}.tar"), str(shards / "shard-000003.tar")
        if cfg.trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
            # the config is checked as written apart from the hardware this machine lacks
            cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision = "cpu", 1, "32"
    resolve_auto(cfg)  # trainer.precision=auto and model.attention=auto, as run_task resolves them
    assert cfg.model.attention in ("sdpa", "eager") and str(cfg.trainer.precision) in ("32", "bf16-mixed", "16-mixed")
    datamodule = instantiate(cfg.data)
    assert datamodule.writers("val") and datamodule.writers("test")
    assert datamodule.writers("train") or "urls" in cfg.data, "only shards name no training writers up front"
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert str(tmp_path) in str(trainer.default_root_dir)


def test_the_data_module_renders_a_batch_from_the_default_config(tmp_path):
    cfg = compose_experiment("demo", tmp_path)
    with open_dict(cfg):
        cfg.data.update(SMALL_DATA)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.target.shape[:3] == (3, 1, 64)  # train split: 1 family x 1 writer x 3 lines


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("IMURU_PL_ROOT", None)  # run.py sets it itself
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cfg_job_prints_the_composed_config():
    result = run_cli("--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "_target_: imuru_pl.data.datamodule.LineDataModule" in result.stdout
    assert "task_name: train" in result.stdout  # the demo experiment (training) is the default
    assert "latent_cache: true" in result.stdout


def test_help_prints_the_config_groups():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "experiment:" in result.stdout and "data:" in result.stdout


def test_the_vae_stage_trains_on_plain_batches_even_with_a_curriculum(tmp_path):
    from imuru_pl.tasks.train_vae import build_datamodule

    cfg = compose_experiment("demo", tmp_path, ["data.curriculum.steps=300"])
    assert cfg.data.curriculum.steps == 300
    datamodule = build_datamodule(cfg)
    assert datamodule.curriculum["steps"] == 0 and datamodule.pairing == "same_line"


def test_the_vae_stage_has_its_own_time_cap_not_the_imuru_stages(tmp_path):
    from imuru_pl.tasks.train_vae import build_trainer

    def vae_timers(experiment: str) -> tuple:
        cfg = compose_experiment(experiment, tmp_path, ["logger=none"])
        assert cfg.trainer.max_time  # both cap the Imuru stage's minutes
        trainer = build_trainer(cfg, [])
        assert trainer.fit_loop.max_steps == cfg.vae.train.max_steps
        return tuple(cb._duration for cb in trainer.callbacks if type(cb).__name__ == "Timer")

    assert vae_timers("demo") == (300,)  # 1200 steps or 5 minutes, not the Imuru stage's 8
    assert vae_timers("legible") == ()  # its 5000 steps decide


def test_the_vae_stage_reads_vae_data_over_data_and_the_imuru_stage_does_not(tmp_path):
    import shutil

    from imuru_pl.data.fonts import package_folder
    from imuru_pl.errors import UserError
    from imuru_pl.tasks.train_vae import build_datamodule

    fonts = tmp_path / "fonts"
    fonts.mkdir()
    shutil.copy(sorted(package_folder("fontpkg_zeyada").rglob("*.ttf"))[0], fonts)
    cfg = compose_experiment("legible_fonts", tmp_path, [f"vae.data.font_dirs=[{fonts}]"])
    vae_data = build_datamodule(cfg)
    assert vae_data.hparams.font_dirs == [str(fonts)] and vae_data.lines_per_writer["train"] == 64
    assert vae_data.hparams.val_fonts == ["kalam"]
    assert vae_data.hparams.test_fonts == ["great_vibes", "yellowtail"]
    imuru_data = instantiate(cfg.data)
    assert imuru_data.hparams.font_dirs == [] and imuru_data.lines_per_writer["train"] == 160
    assert imuru_data.hparams.test_fonts == ["great_vibes", "yellowtail"]
    wrong = compose_experiment("legible_fonts", tmp_path, ["+vae.data.font_folder=x"])
    with pytest.raises(UserError, match="vae.data.font_folder is not a key of data"):
        build_datamodule(wrong)


@pytest.mark.parametrize("data", ["folder", "iam"])
def test_the_default_experiment_composes_with_real_data(data, tmp_path):
    """`python run.py task=train data=folder data.root=...` (docs/real_data.md): the demo, the default
    experiment, sets no key that only the synthetic data has."""
    from hydra.utils import get_class

    from imuru_pl.data.real import RealLineDataModule

    cfg = compose_experiment("demo", tmp_path, [f"data={data}"])
    target = get_class(cfg.data._target_)
    known = set(inspect.signature(RealLineDataModule.__init__).parameters)
    known |= set(inspect.signature(target.__init__).parameters)
    unknown = {key for key in cfg.data if not str(key).startswith("_")} - known
    assert not unknown, f"data={data} would be given keys it does not take: {sorted(unknown)}"
    if data == "folder":
        cfg.data.root, cfg.data.split = str(handwriting_folder(tmp_path / "folder")), "all_train"
        assert instantiate(cfg.data).writers("train")
