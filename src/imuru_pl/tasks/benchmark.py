"""`python run.py task=benchmark model_dir=<model> set=<shtg .json.gz> images=<folder> out=<dir>`: a styled-HTG
test set generated and scored as the HWD protocol does.

For every sample of the set (data/shtg.py): its `num_style_samples` style lines are loaded and joined, its
text (mapped into the model's charset as the library's `simplify_text` does) is written by the model, and
the line is saved at `<out>/generated/<dst>` (a model that carries a line reader, the starter, reads the style
lines for the line's width, as it does everywhere; `style_reader=false` turns that off); the real line `gen_id` goes to `<out>/real/<dst>` (64 px
high, gray, as targets are prepared), both folders with their `transcriptions.json`. Then both are scored by
the evaluator (`metrics.*`) and the report's table is printed and saved (`<out>/benchmark.json`, `.md`).

A re-run with the same out= skips every sample already written (`<out>/generation.jsonl` records each one
with its geometry after its images are saved), so a killed benchmark goes on where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import string
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from imuru_pl.console import progress
from imuru_pl.data.batch import pad_images
from imuru_pl.data.image import load_line, tensor_to_image
from imuru_pl.data.shtg import ShtgSample, index_images, read_set, simplify_text
from imuru_pl.data.text import DEFAULT_CHARSET
from imuru_pl.data.transcriptions import TRANSCRIPTIONS
from imuru_pl.errors import UserError
from imuru_pl.metrics import evaluate_folders, save_report
from imuru_pl.metrics.geometry import line_geometry
from imuru_pl.metrics.report import benchmark_table, protocol_match
from imuru_pl.pipeline import ImuruPipeline, write_lines_detailed
from imuru_pl.tasks.common import artefact_dir
from imuru_pl.tasks.evaluate import metrics_config
from imuru_pl.tasks.generate import save_atomically

log = logging.getLogger(__name__)

LEDGER = "generation.jsonl"
SETTINGS = "benchmark_settings.json"
REPORT, TABLE = "benchmark.json", "benchmark.md"
EXAMPLES = 5  # skipped samples named in the report, per reason
PRINTABLE_ASCII = string.ascii_letters + string.digits + string.punctuation + " "  # charset=ascii


@dataclass(frozen=True)
class Written:
    """One line of the ledger: a sample whose generated and real lines are both saved."""

    dst: str
    text: str  # what the model was asked to write (the set's text in the model's charset)
    real_text: str  # the set's own text: the real line's transcription
    columns: int
    stopped: bool
    real_width: int


def _positive(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key} must be a whole number of at least 1, got {value!r}.")
    return value


def _precision(cfg: DictConfig, device: torch.device) -> str:
    precision = str(cfg.get("precision") or "auto")
    if precision not in ("auto", "bf16", "32"):
        raise UserError(f"precision is auto, bf16 or 32, not {precision!r}.")
    return ("bf16" if device.type == "cuda" else "32") if precision == "auto" else precision


def _device(cfg: DictConfig) -> torch.device:
    name = str(cfg.get("device") or "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no CUDA device is visible; use device=cpu (or auto).")
    return torch.device(name)


def read_ledger(out: Path) -> dict[str, Written]:
    """The samples already written: ledger lines whose two images exist (a line cut short by a kill, or
    one whose images went missing, is written again)."""
    done: dict[str, Written] = {}
    path = out / LEDGER
    if not path.is_file():
        return done
    for line in path.read_text("utf-8").splitlines():
        try:
            record = Written(**json.loads(line))
        except (ValueError, TypeError):
            continue
        if (out / "generated" / record.dst).is_file() and (out / "real" / record.dst).is_file():
            done[record.dst] = record
    return done


def ends_a_line(path: Path) -> bool:
    """True for an empty file or one whose last byte ends a line."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return True
        handle.seek(size - 1)
        return handle.read(1) == b"\n"


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A re-run goes on only with the set, model and style settings the lines were written with."""
    path = out / SETTINGS
    if path.is_file():
        before = json.loads(path.read_text("utf-8"))
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise UserError(f"out={out} holds a benchmark written with other {', '.join(changed)}; give a new "
                            "out= folder, or the same settings to go on with it.")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n", "utf-8")


def finish_folders(out: Path, done: dict[str, Written]) -> None:
    """transcriptions.json for both folders, and no image that the ledger does not vouch for (a kill between
    saving a line and recording it leaves one, as it may leave a temporary file)."""
    for folder, text in (("generated", "text"), ("real", "real_text")):
        root = out / folder
        for path in root.glob("*/*"):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and rel not in done and rel != TRANSCRIPTIONS:
                path.unlink()
        mapping = {dst: getattr(done[dst], text) for dst in sorted(done)}
        tmp = root / f".{TRANSCRIPTIONS}.tmp"
        tmp.write_text(json.dumps(mapping, indent=1, ensure_ascii=False), "utf-8")
        tmp.replace(root / TRANSCRIPTIONS)


class Writer:
    """Loads a batch of samples' lines, writes their texts, saves both lines and records them."""

    def __init__(self, pipeline: ImuruPipeline, images: dict[str, Path], cfg: DictConfig, out: Path,
                 precision: str):
        self.pipeline, self.images, self.out = pipeline, images, out
        self.num_styles = _positive(cfg, "num_style_samples")
        self.style_max_width = _positive(cfg, "style_max_width")
        self.max_new_columns = cfg.get("max_new_columns")
        self.autocast = precision == "bf16"
        self.skipped: dict[str, list[str]] = {}
        self.style = functools.lru_cache(maxsize=256)(self._style)

    def skip(self, reason: str, sample: ShtgSample, detail: str = "") -> None:
        self.skipped.setdefault(reason, []).append(f"{sample.dst}{': ' + detail if detail else ''}")

    def _path(self, image_id: str) -> Path:
        if image_id not in self.images:
            raise UserError(f"no image with id {image_id}")
        return self.images[image_id]

    def _style(self, image_id: str) -> torch.Tensor:
        return load_line(self._path(image_id), channels=3, max_width=None)[..., : self.style_max_width]

    def load(self, sample: ShtgSample) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(style (3, 64, w), real (1, 64, w')), or None with the sample skipped and its reason counted."""
        try:
            style = torch.cat([self.style(i) for i in sample.styles(self.num_styles)], dim=-1)
            real = load_line(self._path(sample.gen_id), channels=1, max_width=None)
        except UserError as err:
            self.skip("missing image" if "no image with id" in str(err) else "unreadable image", sample,
                      str(err).rstrip("."))
            return None
        return style, real

    def write(self, batch: list[tuple[ShtgSample, str]], ledger) -> int:
        loaded = [(sample, text, self.load(sample)) for sample, text in batch]
        loaded = [(sample, text, lines) for sample, text, lines in loaded if lines is not None]
        if not loaded:
            return 0
        style, widths = pad_images([lines[0] for _, _, lines in loaded])
        device = self.pipeline.device
        read = self.pipeline.read_styles(style, widths)  # None unless the model carries a reader
        with torch.autocast(device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext():
            written = write_lines_detailed(self.pipeline.model, self.pipeline.vae, style, widths,
                                           [text for _, text, _ in loaded], self.max_new_columns, read)
        for (sample, text, (_, real)), image, columns, stopped in zip(
                loaded, written.images, written.lengths.tolist(), written.stopped.tolist()):
            save_atomically(tensor_to_image(image), self.out / "generated" / sample.dst)
            save_atomically(tensor_to_image(real), self.out / "real" / sample.dst)
            record = Written(sample.dst, text, sample.text, int(columns), bool(stopped), int(real.shape[-1]))
            ledger.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
            ledger.flush()
        return len(loaded)


def pending_samples(samples: list[ShtgSample], done: dict[str, Written], charset: str, writer: Writer,
                    ) -> tuple[list[tuple[ShtgSample, str]], int]:
    """Samples still to write with the text each is written with, grouped by style (then by length, so a
    batch's lines end together); and how many of all had characters outside the charset."""
    pending, outside = [], 0
    for sample in samples:
        text = simplify_text(sample.text, charset)
        outside += text != " ".join(sample.text.split())
        if sample.dst in done:
            continue
        if not text:
            writer.skip("no character of the charset", sample, repr(sample.text))
            continue
        pending.append((sample, text))
    pending.sort(key=lambda item: (item[0].styles(writer.num_styles), len(item[1])))
    return pending, outside


def run(cfg: DictConfig) -> dict[str, Any]:
    for key, what in (("model_dir", "an exported model directory"), ("set", "a styled-HTG set file (.json.gz)"),
                      ("images", "the folder of the set's line images"), ("out", "a folder for the results")):
        if not cfg.get(key):
            raise UserError(f"task=benchmark needs {key}=<{what}>.")
    set_path = Path(to_absolute_path(str(cfg.set)))
    samples = read_set(set_path)
    if cfg.get("limit"):
        samples = samples[: _positive(cfg, "limit")]
    images = index_images(to_absolute_path(str(cfg.images)))
    batch_size = _positive(cfg, "batch_size")
    device = _device(cfg)
    precision = _precision(cfg, device)
    metrics = metrics_config(cfg)
    model_dir = artefact_dir(cfg.model_dir)
    pipeline = ImuruPipeline.from_pretrained(model_dir, device=device)
    if cfg.get("style_reader") is False:
        pipeline.reader = None  # the widths the model plans by itself
    charset = str(cfg.get("charset") or DEFAULT_CHARSET)
    charset = PRINTABLE_ASCII if charset == "ascii" else charset
    out = Path(to_absolute_path(str(cfg.out)))
    new_out = not out.exists()
    writer = Writer(pipeline, images, cfg, out, precision)
    check_settings(out, {"set": str(set_path), "set_sha256": hashlib.sha256(set_path.read_bytes()).hexdigest(),
                         "model_dir": str(model_dir), "num_style_samples": writer.num_styles,
                         "style_max_width": writer.style_max_width, "charset": charset,
                         "max_new_columns": writer.max_new_columns, "style_reader": pipeline.reader is not None})
    done = read_ledger(out)
    pending, outside = pending_samples(samples, done, charset, writer)
    resumed = sum(s.dst in done for s in samples)
    log.info("%d samples: %d written before, %d to write (%s, %s).", len(samples), resumed, len(pending),
             device, precision)

    start, generated = time.perf_counter(), 0
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    with open(out / LEDGER, "a", encoding="utf-8") as ledger:
        if not ends_a_line(out / LEDGER):
            ledger.write("\n")  # a record cut short by a kill stays a line of its own, ignored
        for batch in progress(batches, desc="Generating", unit="batch"):
            generated += writer.write(batch, ledger)
    seconds = time.perf_counter() - start
    done = {dst: record for dst, record in read_ledger(out).items() if dst in {s.dst for s in samples}}
    if not done:
        if new_out:
            shutil.rmtree(out, ignore_errors=True)  # nothing was written: leave nothing behind
        raise UserError(f"No sample of {set_path} could be written: {json.dumps(writer.skipped)[:500]}.")
    finish_folders(out, done)

    counts = {"samples": len(samples), "written": len(done), "generated_now": generated, "resumed": resumed,
              "outside_charset": outside, "skipped": {k: len(v) for k, v in writer.skipped.items()},
              "skipped_examples": {k: v[:EXAMPLES] for k, v in writer.skipped.items()}}
    records = list(done.values())
    geometry = line_geometry(torch.tensor([r.columns for r in records]), torch.tensor([r.stopped for r in records]),
                             torch.tensor([r.real_width for r in records]))
    report: dict[str, Any] = {"set": str(set_path), "model_dir": str(model_dir), "device": str(device),
                              "precision": precision, "num_style_samples": writer.num_styles, **counts,
                              "generation_seconds": round(seconds, 2),
                              "lines_per_second": round(generated / seconds, 3) if generated else None}
    if cfg.get("evaluate", True):
        report.update({**evaluate_folders(out / "generated", out / "real", metrics), **geometry})
        report["protocol"] = protocol_match(report)
    else:
        report.update(geometry)
    save_report(report, out / REPORT)
    table = benchmark_table(report)
    (out / TABLE).write_text(table + "\n", "utf-8")
    skipped = ", ".join(f"{n} {k}" for k, n in counts["skipped"].items()) or "none"
    log.info("Benchmark of %s on %s: %d of %d samples written (%d now, %d before); skipped: %s; %d texts had "
             "characters outside the charset.\n%s\nReport: %s", model_dir, set_path.name, len(done), len(samples),
             generated, resumed, skipped, outside, table, out / REPORT)
    return report
