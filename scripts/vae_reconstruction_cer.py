"""Reconstruction CER of a saved line VAE on held-out writers of the synthetic data (docs/legibility.md).

    .venv/bin/python scripts/vae_reconstruction_cer.py --vae-dir outputs/train/<run>/vae [--lines 128]
        [--split test] [key=value ...]

Reads each line before and after the VAE round trip with the configured OCR engine (`metrics.ocr`) and
prints both CERs and their difference, overall and per font family, then one JSON line. Extra `key=value` arguments override the
composed config (e.g. data.lines_per_writer.test=32).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from imuru_pl.metrics.reconstruction import reconstruction_cer
from imuru_pl.models.vae import LineVAE

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae-dir", required=True, help="a saved line VAE directory")
    parser.add_argument("--lines", type=int, default=128, help="held-out lines to read")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="held-out writers of this split")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("run", overrides=["task=train", *args.overrides])
    vae = LineVAE.from_pretrained(args.vae_dir).eval()
    datamodule = instantiate(cfg.data)
    datamodule.setup("test" if args.split == "test" else "validate")
    loader = datamodule.test_dataloader() if args.split == "test" else datamodule.val_dataloader()
    started = time.time()
    family = {w.id: w.font for w in datamodule.writers(args.split)}
    result = reconstruction_cer(vae, loader, args.lines, cfg.metrics, group=lambda w: family.get(w, w))
    result["seconds"] = round(time.time() - started, 1)
    print(f"{result['lines']} {args.split} lines: CER original {result['cer_original']:.4f}, "
          f"reconstruction {result['cer_reconstruction']:.4f}, difference {result['delta_cer']:+.4f}")
    for name, scores in result["per_group"].items():
        print(f"  {name}: {scores['lines']} lines, CER original {scores['cer_original']:.4f}, "
              f"reconstruction {scores['cer_reconstruction']:.4f}")
    print(json.dumps({"vae_dir": args.vae_dir, "split": args.split, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
