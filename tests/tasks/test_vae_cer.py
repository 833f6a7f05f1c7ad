"""`python run.py task=vae_cer vae_dir=<vae>`: OCR reads held-out lines before and after a saved VAE's round
trip."""

import json
from itertools import islice
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from hydra.utils import instantiate

from imuru_pl.models.vae import LineVAE

from cli_helpers import compose_cfg, run_cli

DATA = ["data.lines_per_writer={train:8,val:4,test:4}", "data.writers_per_font=3", "data.batch_size=4",
        "data.eval_batch_size=4", "data.num_workers=0"]


def saved_vae(directory: Path, datamodule) -> Path:
    """An untrained tiny line VAE (a real AutoencoderKL), stop constants measured on training lines."""
    datamodule.setup("fit")
    torch.manual_seed(0)
    blocks = 4
    autoencoder = AutoencoderKL(in_channels=3, out_channels=1, latent_channels=1,
                                block_out_channels=[8] * blocks,
                                down_block_types=["DownEncoderBlock2D"] * blocks,
                                up_block_types=["UpDecoderBlock2D"] * blocks, layers_per_block=1,
                                norm_num_groups=4, mid_block_add_attention=False, sample_size=64,
                                scaling_factor=1.0)
    vae = LineVAE(autoencoder).eval()
    vae.measure_stop_constants(islice(datamodule.train_dataloader(), 2), blank_widths=(128,))
    return vae.save_pretrained(directory)


def test_the_reconstruction_cer_of_a_saved_vae_is_reported_per_family(tmp_path: Path):
    datamodule = instantiate(compose_cfg(DATA, tmp_path / "compose").data)
    vae = saved_vae(tmp_path / "vae", datamodule)
    run = tmp_path / "run"
    result = run_cli("task=vae_cer", f"vae_dir={vae}", "lines=6", *DATA, "print_config=false",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((run / "vae_cer.json").read_text())
    assert report["vae_dir"] == str(vae) and report["split"] == "test" and report["lines"] == 6
    assert sum(group["lines"] for group in report["per_group"].values()) == 6
    assert set(report["per_group"]) <= {w.font for w in datamodule.writers("test")}, "font families"
    assert report["cer_reconstruction"] >= 0.8, "an untrained VAE loses the letters"
    assert abs(report["delta_cer"] - (report["cer_reconstruction"] - report["cer_original"])) < 1e-9


def test_bad_input_is_one_sentence(tmp_path: Path):
    command = f"hydra.run.dir={tmp_path / 'run'}"
    results = {
        "task=vae_cer needs vae_dir=": run_cli("task=vae_cer", command),
        "split is val or test": run_cli("task=vae_cer", f"vae_dir={tmp_path}", "split=train", command),
        "lines is the number of held-out lines": run_cli("task=vae_cer", f"vae_dir={tmp_path}", "lines=0",
                                                         command),
    }
    for message, result in results.items():
        output = result.stdout + result.stderr
        assert result.returncode == 2 and message in output and "Traceback" not in output, output[-2000:]
