"""Does a trained model know its letters? OCR CER of its lines teacher-forced and free-running.

    .venv/bin/python scripts/teacher_forced_cer.py --model-dir outputs/train/<run>/model [--lines 32]
        [--split val] [key=value ...]

For held-out lines of the synthetic data (`--split val|test`, each styled by another line of its writer) it
reads four versions with the configured OCR engine (`metrics.ocr`) and prints their CER, then one JSON line:
the real line, its VAE reconstruction (the floor the decoder sets), the model's prediction of every column
with every previous column real (teacher forcing: the training objective) and the model's own generation.
A model whose teacher-forced lines do not read does not know which letter a column belongs to. Extra
`key=value` arguments override the composed config (default: the legible experiment's data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from imuru_pl.data.batch import collate_lines, spread_samples
from imuru_pl.data.image import tensor_to_image
from imuru_pl.metrics.cer import cer
from imuru_pl.metrics.evaluator import get_ocr
from imuru_pl.metrics.settings import settings_from_config
from imuru_pl.models.latents import LatentEncoder
from imuru_pl.pipeline import ImuruPipeline, write_lines

ROOT = Path(__file__).resolve().parents[1]
BATCH = 16


@torch.inference_mode()
def four_versions(pipeline: ImuruPipeline, batch) -> dict[str, list]:
    model, vae = pipeline.model, pipeline.vae
    latents = LatentEncoder(vae)
    inputs, counts = latents.model_inputs(model, batch, sample=False)
    forced = vae.decode(model(**inputs).prediction)
    reconstructed = vae.decode(inputs["target"])

    def crop(images):
        return [tensor_to_image(images[i, :, :, : 8 * n]) for i, n in enumerate(counts.tolist())]

    generated = write_lines(model, vae, batch.style, batch.style_widths, batch.texts)
    return {"real": [tensor_to_image(im[:, :, : int(w)]) for im, w in zip(batch.target, batch.target_widths)],
            "vae_reconstruction": crop(reconstructed), "teacher_forced": crop(forced),
            "generated": [tensor_to_image(line) for line in generated]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", required=True, help="an exported model directory (<run>/model)")
    parser.add_argument("--lines", type=int, default=32, help="held-out lines to read")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="held-out writers of this split")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("run", overrides=["experiment=legible", *args.overrides])
    pipeline = ImuruPipeline.from_pretrained(args.model_dir)
    datamodule = instantiate(cfg.data)
    samples = spread_samples(datamodule.dataset(args.split), args.lines)
    images: dict[str, list] = {}
    for start in range(0, len(samples), BATCH):
        for name, lines in four_versions(pipeline, collate_lines(samples[start : start + BATCH])).items():
            images.setdefault(name, []).extend(lines)
    ocr, texts = get_ocr(settings_from_config(cfg.metrics)), [s["text"] for s in samples]
    result = {name: round(cer(ocr.read(lines), texts), 4) for name, lines in images.items()}
    figures = ", ".join(f"{name} {value:.3f}" for name, value in result.items())
    print(f"{len(samples)} {args.split} lines, OCR CER: {figures}")
    print(json.dumps({"model_dir": args.model_dir, "split": args.split, "lines": len(samples), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
