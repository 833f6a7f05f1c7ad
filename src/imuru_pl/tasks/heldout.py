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
it reads; the report keeps the reader's CER on the style lines. A model that carries its own reader
(`reader/` in its directory: the bundled starter) reads with it unless told otherwise
(`heldout.style_reader=false`: no reader; `heldout.style_text_widths=true`: the true texts). `heldout.compare_with=<model dir or bundled
name>` has another model write the same lines from the same style lines (the demo: the bundled `starter`):
`compared/`, a column of the grid between the run's lines and the real ones, and its own report beside
`generated`'s.

`python run.py task=heldout run_dir=<run> out=<dir> [key=value ...]` (`run`) writes and scores a finished
run's held-out lines again, with the run's own config (`<run>/.hydra/config.yaml`) and exported model
(`<run>/model`, or `model_dir=<dir>`); every other key given on the command line changes the run's config
(e.g. `heldout.style_text_widths=true`, `heldout.num_lines=128`). `checkpoint=<ckpt>` with
`weights=trained|average` scores a training checkpoint's weights instead: with `optim.ema_decay` on, a
checkpoint holds both the trained weights and their moving average, so the two are scored on the same step of
the same run. With `duration_fit.steps=N` the width head is fitted again first, as at the end of training, and
the refitted model is saved to `<out>/model` (without it nothing is fitted, whatever the run's config says: a
run's own fit is in its exported model). `<out>/heldout/` gets the lines, the grid and `evaluation.json`,
`<out>/heldout_figures.json` the headline figures.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from imuru_pl.callbacks.checkpoint import read_checkpoint
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
from imuru_pl.tasks.common import artefact_dir
from imuru_pl.tasks.duration_fit import refit_durations
from imuru_pl.visual import rows_grid

log = logging.getLogger(__name__)

HELDOUT_SUBDIR = "heldout"
FIGURES_FILE = "heldout_figures.json"
COMPARED = "compared"  # heldout.compare_with's lines for the same samples: their folder and report key
EXPORT_SUBDIR = "model"
RUN_CONFIG = Path(".hydra") / "config.yaml"
WEIGHTS = ("trained", "average")
# Keys of task=heldout itself: everything else given on the command line changes the run's config.
TASK_KEYS = ("task", "task_name", "run_dir", "out", "model_dir", "checkpoint", "weights", "device",
             "print_config")
_MISSING = object()


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
    setting = settings.get("style_reader")
    reader = style_reader(setting, with_style_text)
    other_model = settings.get("compare_with")
    other_pipeline = model_pipeline(other_model, pipeline.device) if other_model else None
    own_reader = pick_reader(pipeline, reader, setting, with_style_text)
    own = write_samples(pipeline, samples, batch_size, with_style_text, own_reader)
    other_reader = None if other_pipeline is None else pick_reader(other_pipeline, reader, setting, with_style_text)
    compared = None if other_pipeline is None else write_samples(
        other_pipeline, samples, batch_size, with_style_text, other_reader, desc=f"Held-out lines ({other_model})")

    writers = [w.id for w in datamodule.writers("test")]
    fake, real, wrong = [], [], []
    for i, (sample, image) in enumerate(zip(samples, own.images)):
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
    other = [] if compared is None else [
        Item(s["writer"], tensor_to_image(image), s["text"], f"{i:04d}")
        for i, (s, image) in enumerate(zip(samples, compared.images))]
    for folder, items in (("generated", fake), ("real", real), ("wrong_writer", wrong), (COMPARED, other)):
        if items:
            write_folder(root / folder, items)
    columns = [own.images[:8]] + ([compared.images[:8]] if compared is not None else [])
    rows = [[s["style"], *lines, s["target"]] for s, *lines in zip(samples[:8], *columns)]
    rows_grid(rows).save(root / "grid.png")
    log.info("Wrote %d held-out lines (style | generated%s | real grid: %s)", len(samples),
             f" | {other_model}" if compared is not None else "", root / "grid.png")
    result = {"heldout_dir": str(root)}
    if settings.get("evaluate", True):
        report = {"generated": {**evaluate_sets(fake, real, cfg.metrics), **own.geometry,
                                "style_text_widths": with_style_text}}
        report["generated"].update(reader_report(own_reader, reader, setting, own.read_texts, samples))
        if compared is not None:  # the same styles and texts, written by the other model
            report[COMPARED] = {**evaluate_sets(other, real, cfg.metrics), **compared.geometry,
                                "model": str(other_model),
                                **reader_report(other_reader, reader, setting, compared.read_texts, samples)}
        if wrong:  # against the real lines of the same texts only
            names = {item.name for item in wrong}
            report["wrong_writer"] = evaluate_sets(wrong, [r for r in real if r.name in names], cfg.metrics)
        save_report(report, root / "evaluation.json")
        result["evaluation"] = {k: _headline(v) for k, v in report.items()}
        log.info("Held-out evaluation: %s", json.dumps(result["evaluation"]))
    return result


class Written(NamedTuple):
    images: list[torch.Tensor]
    geometry: dict[str, float]  # stop rate and width error against the real lines (metrics.geometry)
    read_texts: list[str]  # what the style reader read in each style line (empty without one)


def write_samples(pipeline: ImuruPipeline, samples: list[dict], batch_size: int, with_style_text: bool,
                  reader: LineReader | None, desc: str = "Held-out lines") -> Written:
    """Each sample's text in the hand of its style line, in batches."""
    images, read_texts, lengths, stopped, real_widths = [], [], [], [], []
    for start in progress(range(0, len(samples), batch_size), desc=desc, unit="batch"):
        batch = collate_lines(samples[start : start + batch_size])
        style_texts = batch.style_texts if with_style_text else None
        if reader is not None:
            style_texts = reader.read_lines(batch.style, batch.style_widths)
            read_texts += style_texts
        written = write_lines_detailed(pipeline.model, pipeline.vae, batch.style, batch.style_widths,
                                       batch.texts, style_texts=style_texts)
        images += written.images
        lengths.append(written.lengths)
        stopped.append(written.stopped)
        real_widths.append(batch.target_widths.cpu())
    return Written(images, line_geometry(torch.cat(lengths), torch.cat(stopped), torch.cat(real_widths)),
                   read_texts)


def model_pipeline(model_dir, device="cpu") -> ImuruPipeline:
    """An exported model directory or a bundled name (`starter`): `model_dir=`, `heldout.compare_with`."""
    return ImuruPipeline.from_pretrained(artefact_dir(model_dir), device=device)


def style_reader(directory, with_style_text: bool) -> LineReader | None:
    """The reader of `heldout.style_reader` (None when unset); one sentence for a bad directory or for
    both sources of style texts at once."""
    if not directory:
        return None
    if with_style_text:
        raise UserError("heldout.style_text_widths=true and heldout.style_reader both give the style lines' "
                        "texts; choose one.")
    return LineReader.from_pretrained(to_absolute_path(str(directory)), key="heldout.style_reader")


def pick_reader(pipeline: ImuruPipeline, configured: LineReader | None, setting, with_style_text: bool
                ) -> LineReader | None:
    """The reader a model's held-out lines are written with: `heldout.style_reader`'s, else the model's own
    (none with `heldout.style_reader=false` or the true style texts)."""
    if configured is not None:
        return configured
    return None if setting is False or with_style_text else pipeline.reader


def reader_report(used: LineReader | None, configured: LineReader | None, setting, read_texts: list[str],
                  samples: list[dict]) -> dict:
    """Which reader read the style lines, and its CER on them (nothing without one)."""
    if used is None:
        return {}
    name = str(setting) if used is configured else "the model's own (reader/)"
    return {"style_reader": name, "style_reader_cer": cer(read_texts, [s["style_text"] for s in samples])}


def _headline(report: dict) -> dict:
    keys = ("hwd", "fid", "cer_fake", "cer_real", "delta_cer", "stop_rate", "width_error", "width_within_15")
    return {k: round(report[k], 4) for k in keys if isinstance(report.get(k), (int, float))}


# --- task=heldout: a finished run's held-out lines again ----------------------------------------------------
def command_line_keys() -> list[str]:
    """The config keys given on the command line of this run (Hydra's task overrides), in order."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    keys = []
    for override in overrides:
        key = override.key_or_group
        if override.is_delete():
            raise UserError(f"task=heldout changes keys of the run's config but deletes none; drop ~{key}.")
        if key.split(".")[0] not in TASK_KEYS and not key.startswith("hydra."):
            keys.append(key)
    return keys


def run_overrides(cfg: DictConfig, keys: list[str]) -> dict[str, Any]:
    """{key: the value Hydra composed for it} for the keys given on the command line."""
    values = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            raise UserError(f"{key}= names no key of the config; task=heldout can only change keys of the "
                            "run's own config.")
        values[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return values


def run_config(run_dir: Path, out: Path, overrides: dict[str, Any]) -> DictConfig:
    """The run's config with `overrides` applied, writing into `out`, fitting nothing unless asked."""
    path = run_dir / RUN_CONFIG
    if not path.is_file():
        raise UserError(f"{run_dir} holds no {RUN_CONFIG.as_posix()}: give run_dir= a run directory written "
                        "by run.py.")
    cfg = OmegaConf.load(path)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
    OmegaConf.update(cfg, "paths.output_dir", str(out), force_add=True)  # the run's named Hydra's runtime
    if "duration_fit" in cfg and "duration_fit.steps" not in overrides:
        cfg.duration_fit.steps = 0  # the run's own fit is in its exported model already
    return cfg


def load_checkpoint_weights(pipeline: ImuruPipeline, path: Path, weights: str) -> None:
    """The checkpoint's `model.*` (trained) or `ema_model.*` (average) weights into the pipeline's model."""
    state = read_checkpoint(path)["state_dict"]
    prefix = "ema_model." if weights == "average" else "model."
    chosen = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    if not chosen:
        raise UserError(f"{path} holds no moving average of the weights (trained with optim.ema_decay=0); "
                        "use weights=trained.")
    letters = pipeline.model.letters
    if letters is not None and letters.width_planner is not None and not any(
            key.startswith("letters.width_planner.") for key in chosen):
        letters.drop_width_head()  # fitted after training (duration_fit), so never part of a checkpoint
        log.info("The exported model's width head was fitted after training and is not in %s: the lines keep "
                 "the checkpoint's own widths (duration_fit.steps=N fits a width head for its weights).", path)
    try:
        pipeline.model.load_state_dict(chosen)
    except RuntimeError as err:
        raise UserError(f"{path} does not fit the run's model ({str(err).splitlines()[0]}).") from None


def run(cfg: DictConfig) -> dict[str, Any]:
    """Write and score `run_dir`'s held-out lines again into `out` (the module docstring has the keys)."""
    if not cfg.get("run_dir"):
        raise UserError("task=heldout needs run_dir=<a finished training run> (with .hydra/config.yaml and "
                        "model/).")
    run_dir = Path(to_absolute_path(str(cfg.run_dir)))
    out = Path(to_absolute_path(str(cfg.out))) if cfg.get("out") else Path(cfg.paths.output_dir)
    if out.resolve() == run_dir.resolve():
        raise UserError("out= names the run itself; give another directory so the run's own lines stay.")
    weights = str(cfg.get("weights") or "average")
    if weights not in WEIGHTS:
        raise UserError(f"weights is trained or average, not {weights!r}.")
    keys = command_line_keys()
    run_cfg = run_config(run_dir, out, run_overrides(cfg, keys))
    model_dir = cfg.get("model_dir") or run_dir / EXPORT_SUBDIR
    pipeline = model_pipeline(model_dir, device=cfg.get("device") or "cpu")
    if cfg.get("checkpoint"):
        load_checkpoint_weights(pipeline, Path(to_absolute_path(str(cfg.checkpoint))), weights)
    refit = refit_durations(run_cfg, pipeline.model, pipeline.vae)
    if refit is not None:
        pipeline.save_pretrained(out / EXPORT_SUBDIR)
        log.info("Saved the refitted model to %s", out / EXPORT_SUBDIR)
    result = write_heldout_lines(run_cfg, pipeline, instantiate(run_cfg.data), out)
    figures = {"run": str(run_dir), "model": str(model_dir), "overrides": keys,
               **({"checkpoint": str(cfg.checkpoint), "weights": weights} if cfg.get("checkpoint") else {}),
               **({"duration_fit": refit} if refit is not None else {}), **result.get("evaluation", {})}
    out.mkdir(parents=True, exist_ok=True)
    (out / FIGURES_FILE).write_text(json.dumps(figures, indent=1) + "\n", "utf-8")
    log.info("Held-out figures (%s): %s", out / FIGURES_FILE, json.dumps(figures))
    return {**result, "figures": figures}
