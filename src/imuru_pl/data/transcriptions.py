"""`<root>/transcriptions.json`: each image's path relative to the root ("writer/name.png") -> its text.

The file of the HWD folder layout (`<root>/<writer>/<image>.png`), read both by the real-data folder dataset
(data/folder.py) and by the evaluation folders (metrics/folders.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from imuru_pl.errors import UserError

TRANSCRIPTIONS = "transcriptions.json"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def read_transcriptions(root: Path) -> dict[str, str]:
    path = root / TRANSCRIPTIONS
    if not path.is_file():
        raise UserError(
            f"{path} is missing: every evaluation folder needs a {TRANSCRIPTIONS} (path -> text)."
        )
    try:
        data = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise UserError(f"{path} must be one JSON object mapping relative image paths to texts.")
    # Accept "./writer/x.png" and Windows separators as the same key.
    return {Path(k.replace("\\", "/")).as_posix(): v for k, v in data.items()}
