"""After training: write lines for held-out (test) writers, their real lines, and evaluate them.

Three sets in the HWD layout under `<run>/heldout/`: `generated/` (the model, styled by another line of
the same writer), `real/` (the test split's own target lines: renders for synthetic data, the images
themselves for real data) and `wrong_writer/` (the same texts by a different held-out writer, filed under
the true writer: the baseline that shows what a style miss costs). Synthetic writers can render any text;
for real data the baseline takes a line of another test writer with the SAME text, and texts nobody else
wrote are left out of it (logged). The evaluation report compares generated and wrong-writer lines with real.
`heldout.style_text_widths=true` hands the model each style line's text, which fits its letter plan to the
hand (`Imuru.width_scale`); off by default, as the protocol gives the model no transcription.
`heldout.style_reader=<reader dir>` gets those texts without a transcription: a line reader (a VAE stage's
`vae_reader/`, trained on the training writers only) reads each style line, and the plan is fitted to what
it reads; the report keeps the reader's CER on the style lines.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from imuru_pl.console import progress
from imuru_pl.data.batch import collate_lines, spread_samples
from imuru_pl.data.image import tensor_to_image
from imuru_pl.errors import UserError
from imuru_pl.metrics.cer import cer
from imuru_pl.metrics.evaluator import evaluate_sets
from imuru_pl.metrics.folders import write_folder
from imuru_pl.metrics.geometry import line_geometry
from imuru_pl.metrics.items import Item
from imuru_pl.metrics.report import save_report
from imuru_pl.models.reader import LineReader
from imuru_pl.pipeline import ImuruPipeline, write_lines_detailed
from imuru_pl.visual import rows_grid

log = logging.getLogger(__name__)

HELDOUT_SUBDIR = "heldout"


def wrong_writer_line(datamodule, sample: dict, writers: list[str]) -> torch.Tensor | None:
    """The sample's text by another held-out writer: rendered (synthetic) or found (real data), else None."""
    if hasattr(datamodule, "render"):
        other = writers[(writers.index(sample["writer"]) + 1) % len(writers)]
        return datamodule.render(sample["text"], other).clean
    return datamodule.line_with_text(sample["text"], other_than=sample["writer"])


def write_heldout_lines(cfg: DictConfig, pipeline: ImuruPipeline, datamodule, out: Path) -> dict:
    settings = cfg.get("heldout", {}) or {}
    count = int(settings.get("num_lines", 32))
    if count <= 0:
        return {}
    datamodule.setup("test")
    samples = spread_samples(datamodule.test_dataset, count)
    batch_size = int(cfg.data.get("eval_batch_size", 8))
    with_style_text = bool(settings.get("style_text_widths", False))  # a model without a plan refuses it
    reader = style_reader(settings.get("style_reader"), with_style_text)
    read_texts: list[str] = []
    generated: list[torch.Tensor] = []
    lengths, stopped, real_widths = [], [], []
    for start in progress(range(0, len(samples), batch_size), desc="Held-out lines", unit="batch"):
        batch = collate_lines(samples[start : start + batch_size])
        style_texts = batch.style_texts if with_style_text else None
        if reader is not None:
            style_texts = reader.read_lines(batch.style, batch.style_widths)
            read_texts += style_texts
        written = write_lines_detailed(pipeline.model, pipeline.vae, batch.style, batch.style_widths,
                                       batch.texts, style_texts=style_texts)
        generated += written.images
        lengths.append(written.lengths)
        stopped.append(written.stopped)
        real_widths.append(batch.target_widths.cpu())
    geometry = line_geometry(torch.cat(lengths), torch.cat(stopped), torch.cat(real_widths))

    writers = [w.id for w in datamodule.writers("test")]
    fake, real, wrong = [], [], []
    for i, (sample, image) in enumerate(zip(samples, generated)):
        name = f"{i:04d}"
        fake.append(Item(sample["writer"], tensor_to_image(image), sample["text"], name))
        real.append(Item(sample["writer"], tensor_to_image(sample["target"]), sample["text"], name))
        stand_in = wrong_writer_line(datamodule, sample, writers)
        if stand_in is not None:
            wrong.append(Item(sample["writer"], tensor_to_image(stand_in), sample["text"], name))
    if not wrong:
        log.info("No wrong-writer baseline: no other test writer wrote any of the %d held-out texts.",
                 len(samples))
    elif len(wrong) < len(samples):
        log.info("Wrong-writer baseline: %d of %d held-out texts were written by no other test writer; "
                 "it covers the other %d.", len(samples) - len(wrong), len(samples), len(wrong))

    root = out / HELDOUT_SUBDIR
    for folder, items in (("generated", fake), ("real", real), ("wrong_writer", wrong)):
        if items:
            write_folder(root / folder, items)
    rows = [[s["style"], g, s["target"]] for s, g in zip(samples[:8], generated[:8])]
    rows_grid(rows).save(root / "grid.png")
    log.info("Wrote %d held-out lines (style | generated | real grid: %s)", len(samples), root / "grid.png")
    result = {"heldout_dir": str(root)}
    if settings.get("evaluate", True):
        report = {"generated": {**evaluate_sets(fake, real, cfg.metrics), **geometry,
                                "style_text_widths": with_style_text}}
        if reader is not None:
            report["generated"]["style_reader"] = str(settings.get("style_reader"))
            report["generated"]["style_reader_cer"] = cer(read_texts, [s["style_text"] for s in samples])
        if wrong:  # against the real lines of the same texts only
            names = {item.name for item in wrong}
            report["wrong_writer"] = evaluate_sets(wrong, [r for r in real if r.name in names], cfg.metrics)
        save_report(report, root / "evaluation.json")
        result["evaluation"] = {k: _headline(v) for k, v in report.items()}
        log.info("Held-out evaluation: %s", json.dumps(result["evaluation"]))
    return result


def style_reader(directory, with_style_text: bool) -> LineReader | None:
    """The reader of `heldout.style_reader` (None when unset); one sentence for a bad directory or for
    both sources of style texts at once."""
    if not directory:
        return None
    if with_style_text:
        raise UserError("heldout.style_text_widths=true and heldout.style_reader both give the style lines' "
                        "texts; choose one.")
    return LineReader.from_pretrained(to_absolute_path(str(directory)), key="heldout.style_reader")


def _headline(report: dict) -> dict:
    keys = ("hwd", "fid", "cer_fake", "cer_real", "delta_cer", "stop_rate", "width_error", "width_within_15")
    return {k: round(report[k], 4) for k in keys if isinstance(report.get(k), (int, float))}
