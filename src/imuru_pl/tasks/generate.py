"""`python run.py task=generate model_dir=<dir> style=<image> text="<text>" out=<png>`.

`style` may be one image or a list (`style='[a.png,b.png]'`: their columns form one prefix);
`text` may be a string or a list of strings (one output per text: out_0.png, out_1.png, ...);
a text with commas needs Hydra quoting: 'text="Hello, world"'. `text_file=<txt>` adds a file's text.
Text longer than one line is wrapped and written as a page. `style_text="<what the style says>"`
(optional; models with aligned letters) fits the letters' widths to the hand; `style_reader=<reader dir>`
(a VAE stage's `vae_reader/`) reads the style image instead, so no transcription is needed. A model that
carries its own reader (the bundled starter) reads the style image with it when neither is given;
`style_reader=false` turns that off.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig

from imuru_pl.bundled import is_bundled, resolve
from imuru_pl.console import progress
from imuru_pl.errors import UserError
from imuru_pl.models.reader import LineReader
from imuru_pl.pipeline import ImuruPipeline

log = logging.getLogger(__name__)


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]


def save_atomically(image, path: Path) -> None:
    """Write a PNG to a temporary file beside `path`, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"Text file not found: {path}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"Cannot read {path} as UTF-8 text ({type(err).__name__}).") from None


def output_paths(out: str, count: int) -> list[Path]:
    path = Path(to_absolute_path(out))
    if path.suffix.lower() != ".png":
        raise UserError(f"out={out} must name a .png file.")
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix}") for i in range(count)]


def run(cfg: DictConfig) -> dict:
    model_dir = str(cfg.get("model_dir") or "starter")  # the bundled starter model when none is named
    if not cfg.get("model_dir") and not is_bundled("starter"):
        raise UserError("Say which model to use: model_dir=<exported model directory> (this install has no "
                        "bundled starter model).")
    styles = [to_absolute_path(str(s)) for s in _as_list(cfg.get("style"))]
    if not styles:
        raise UserError("Give a style image: style=<image> (or a list: style='[a.png,b.png]').")
    texts = [str(t) for t in _as_list(cfg.get("text"))]
    if cfg.get("text_file"):
        texts.append(read_text_file(to_absolute_path(str(cfg.text_file))))
    if not texts or not any(t.strip() for t in texts):
        raise UserError('Give a text to write: text="..." or text_file=<file> (the text is empty).')
    pipeline = ImuruPipeline.from_pretrained(resolve(model_dir, to_absolute_path(model_dir)),
                                             device=cfg.get("device", "cpu"))
    style = pipeline.load_styles(styles)  # validates every image before anything is written
    style_text = cfg.get("style_text")  # checked by the pipeline before the first line; pages are saved after all
    if cfg.get("style_reader") is False:
        pipeline.reader = None  # no reader at all: the widths the model plans by itself
    elif cfg.get("style_reader"):
        if style_text is not None:
            raise UserError("style_text and style_reader both give what the style image says; choose one.")
        pipeline.reader = LineReader.from_pretrained(to_absolute_path(str(cfg.style_reader)), key="style_reader")
    if style_text is None:
        style_text = pipeline.read_style(style)  # the reader's reading, once for every text (None without one)
    pages = [pipeline.write(style, text, style_text) for text in progress(texts, desc="Writing", unit="text")]
    paths = output_paths(str(cfg.out), len(pages))
    for page, path in zip(pages, paths):
        save_atomically(page, path)
        log.info("Wrote %s (%d x %d px)", path, page.width, page.height)
    return {"outputs": [str(p) for p in paths]}
