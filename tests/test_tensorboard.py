"""A tiny training run through run.py: what TensorBoard shows (scalars by stage, image grids, the config
as text, the HParams entry with final metrics) and what the console shows (config tree, output dir)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_helpers import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

# Its own tiny run (not cli_helpers.TINY_TRAIN): held-out evaluation with OCR, images and scalars every few steps.
LOGGED_RUN = [
    "task=train",
    "data.lines_per_writer={train:8,val:4,test:4}",
    "data.writers_per_font=3",
    "data.batch_size=8",
    "vae.pretrained=null",  # its own VAE stage, logged
    "heldout.compare_with=null",
    "vae.train.max_steps=10",
    "vae.train.eval_lines=8",
    "vae.train.stop_lines=16",
    "vae.train.image_every_n_steps=5",
    "trainer.max_steps=10",
    "trainer.val_check_interval=5",
    "trainer.log_every_n_steps=2",
    "callbacks.generation_samples.every_n_steps=5",
    "heldout.num_lines=4",
    "model.max_new_columns=16",
]
STAGES = ("train/", "val/", "eval/", "curve/")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("tb_run")
    proc = run_cli(*LOGGED_RUN, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _events(directory: Path) -> EventAccumulator:
    events = EventAccumulator(str(directory), size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    events.Reload()
    return events


def test_scalars_grouped_by_stage(run):
    out, _ = run
    tags = set(_events(out / "tensorboard").Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/best_loss"} <= tags, tags
    assert {"eval/hwd", "eval/cer_fake", "eval/wrong_writer/hwd"} <= tags, tags
    # Lightning's own `epoch` and the LearningRateMonitor's `lr-<optimizer>` are the only other names.
    strays = {t for t in tags if not t.startswith(STAGES) and t != "epoch" and not t.startswith("lr")}
    assert not strays, strays
    vae_tags = set(_events(out / "tensorboard" / "vae").Tags()["scalars"])
    assert "train/loss" in vae_tags, vae_tags


def test_image_grids(run):
    out, _ = run
    assert "val/samples" in _events(out / "tensorboard").Tags()["images"]
    assert "val/reconstructions" in _events(out / "tensorboard" / "vae").Tags()["images"]


def test_hparams_with_final_metrics(run):
    out, _ = run
    events = _events(out / "tensorboard")
    try:
        content = events.PluginTagToContent("hparams")
    except KeyError:
        pytest.fail("No HParams entry: the train task did not call log_final_metrics after the held-out lines.")
    assert "_hparams_/session_start_info" in content and "_hparams_/experiment" in content, content.keys()
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = dict(start.hparams)
    for key in ("style_enc", "label_noise", "style_noise", "lr", "batch_size", "t5.d_model", "max_width",
                "precision", "seed"):
        assert key in hparams, sorted(hparams)
    assert hparams["style_enc"].string_value == "full"
    assert hparams["batch_size"].number_value == 8
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    assert {"val/best_loss", "eval/hwd", "eval/cer_fake"} <= metric_tags, metric_tags
    # Every metric of the table has a value in the run, as the HParams view reads it.
    scalars = set(events.Tags()["scalars"])
    assert metric_tags <= scalars, metric_tags - scalars
    saved = yaml.safe_load((out / "tensorboard" / "hparams.yaml").read_text())
    assert saved["style_enc"] == "full" and saved["seed"] == 1234, saved


def test_config_as_text(run):
    out, _ = run
    events = _events(out / "tensorboard")
    assert "config/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("```yaml") and text.rstrip().endswith("```")
    config = yaml.safe_load(text.strip("`").removeprefix("yaml"))
    assert config["task_name"] == "train" and config["trainer"]["max_steps"] == 10
    assert config["paths"]["output_dir"] == str(out)  # resolved, not `${hydra:...}`


def test_console_shows_config_tree_and_output_dir(run):
    out, stdout = run
    assert "config" in stdout and "├── data" in stdout and "style_enc: full" in stdout
    assert f"Output directory: {out}" in stdout.replace("\n", "")


def test_cfg_flag_prints_no_tree():
    proc = run_cli("--cfg", "job", "task=train", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "task_name: train" in proc.stdout
    assert "├──" not in proc.stdout and "Output directory" not in proc.stdout
