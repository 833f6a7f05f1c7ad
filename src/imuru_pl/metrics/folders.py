"""The HWD folder layout: `<root>/<writer>/<image>.png` plus `<root>/transcriptions.json`.

`transcriptions.json` maps each image's path relative to the root ("writer/name.png") to its text; it is the
layout the public HWD evaluation reads, so folders written here can be scored by other tools too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from imuru_pl.data.transcriptions import IMAGE_SUFFIXES, TRANSCRIPTIONS, read_transcriptions
from imuru_pl.errors import UserError
from imuru_pl.metrics.items import Item

log = logging.getLogger(__name__)


def _check_component(kind: str, value: str) -> None:
    """Writer ids and names become path components: refuse anything that would escape the folder."""
    if not value or value in {".", ".."} or "/" in value or "\\" in value or "\x00" in value:
        raise UserError(f"The {kind} {value!r} cannot be used as a file or folder name in the HWD layout.")


def write_folder(root: str | os.PathLike, items: Iterable[Item]) -> Path:
    """Write `items` in the HWD layout under `root` and return the root.

    The folder is assembled next to `root` and moved into place at the end, so a failure leaves nothing
    half-written; `root` must not exist yet or be an empty folder.
    """
    root = Path(root)
    items = list(items)
    if not items:
        raise UserError(f"No lines to write to {root}: the evaluation set is empty.")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(f"The output folder {root} already exists and is not empty; choose a new folder.")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        transcriptions: dict[str, str] = {}
        counters: dict[str, int] = {}
        for item in items:
            _check_component("writer", item.writer)
            name = item.name
            if not name:
                name = f"{counters.get(item.writer, 0):05d}"
                counters[item.writer] = counters.get(item.writer, 0) + 1
            _check_component("line name", name)
            rel = f"{item.writer}/{name}.png"
            if rel in transcriptions:
                raise UserError(f"Two lines would both be written to {rel}; give every line a distinct name.")
            (staging / item.writer).mkdir(exist_ok=True)
            item.image.save(staging / rel)
            transcriptions[rel] = item.text
        (staging / TRANSCRIPTIONS).write_text(
            json.dumps(transcriptions, indent=1, ensure_ascii=False), "utf-8"
        )
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Wrote %d lines of %d writers to %s", len(items), len({i.writer for i in items}), root)
    return root


def read_folder(root: str | os.PathLike) -> list[Item]:
    """Read an HWD-layout folder into items, sorted by writer then file name.

    Every image under a writer folder needs an entry in transcriptions.json and every entry needs its image:
    a silent mismatch would change which lines are scored.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"The evaluation folder {root} does not exist or is not a folder.")
    transcriptions = read_transcriptions(root)
    images = sorted(
        p
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".")
        for p in d.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )
    if not images:
        raise UserError(f"The evaluation folder {root} holds no images in <writer>/<image>.png sub-folders.")
    rels = [p.relative_to(root).as_posix() for p in images]
    missing_text = [r for r in rels if r not in transcriptions]
    if missing_text:
        raise UserError(
            f"{root / TRANSCRIPTIONS} has no text for {len(missing_text)} image(s), e.g. {missing_text[0]}."
        )
    missing_image = sorted(set(transcriptions) - set(rels))
    if missing_image:
        raise UserError(
            f"{root / TRANSCRIPTIONS} lists {len(missing_image)} image(s) not found under {root}, "
            f"e.g. {missing_image[0]}."
        )
    items = []
    for path, rel in zip(images, rels, strict=True):
        try:
            with Image.open(path) as img:
                img.load()
                image = img.copy()
        except (UnidentifiedImageError, OSError) as err:
            raise UserError(f"The image {path} cannot be read ({err}).") from None
        items.append(Item(writer=path.parent.name, image=image, text=transcriptions[rel], name=path.stem))
    return items
