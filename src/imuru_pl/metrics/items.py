"""The unit every metric consumes: one line image with its writer and text."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Item:
    """One handwritten line.

    `writer` groups lines for HWD (the HWD layout's folder name); `text` is the transcription used for CER;
    `name` is the file stem inside the writer folder (empty: `write_folder` numbers the lines).
    """

    writer: str
    image: Image.Image
    text: str
    name: str = ""
