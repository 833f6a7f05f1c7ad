"""Offline line recognisers for CER, behind one interface: `backend.read(images) -> texts`.

- rapidocr (default): PP-OCR recognition model bundled with the `rapidocr` wheel, run without detection.
- tesseract: through `tesserocr` or `pytesseract` when the user has one (page segmentation mode 13, raw line).
- trocr: a local TrOCR directory (transformers `VisionEncoderDecoderModel` + its processor), e.g. the
  protocol's trocr-base-handwritten when the user has it on disk.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from imuru_pl.console import progress
from imuru_pl.errors import UserError
from imuru_pl.metrics.images import resize_to_height, to_rgb

log = logging.getLogger(__name__)

OCR_HEIGHT = 64  # the protocol reads lines at height 64
BACKENDS = ("rapidocr", "tesseract", "trocr")


class OcrBackend(Protocol):
    """A recogniser of single text lines; `description` goes into the report."""

    description: str

    def read(self, images: Sequence[Image.Image]) -> list[str]: ...


def prepare_line(image: Image.Image, height: int = OCR_HEIGHT) -> Image.Image:
    """RGB on white at the protocol's OCR height (bilinear: smooth strokes read better than blocky ones)."""
    return resize_to_height(to_rgb(image), height, Image.Resampling.BILINEAR)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


class RapidOcrBackend:
    """Recognition-only RapidOCR; its threads follow torch's setting, keeping the caller's CPU budget."""

    def __init__(self, height: int = OCR_HEIGHT, threads: int | None = None) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as err:
            raise UserError(f"metrics.ocr.backend=rapidocr needs the rapidocr package ({err}).") from None
        threads = threads or torch.get_num_threads()
        self.engine = RapidOCR(
            params={
                "Global.use_det": False,
                "Global.use_cls": False,
                "Global.log_level": "warning",
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        rec = self.engine.cfg.Rec
        self.height = height
        self.description = (
            f"rapidocr {_version('rapidocr')} ({rec.ocr_version.value} {rec.model_type.value} rec, "
            f"no detection, {height} px lines)"
        )

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        texts = []
        for image in progress(images, desc="OCR", unit="line"):
            bgr = np.ascontiguousarray(np.asarray(prepare_line(image, self.height))[:, :, ::-1])
            result = self.engine(bgr, use_det=False, use_cls=False, use_rec=True)
            txts = getattr(result, "txts", None)
            texts.append(" ".join(txts) if txts else "")
        return texts


class TesseractBackend:
    """Tesseract in raw-line mode (PSM 13); PSM 7 returns empty text for many script-like lines."""

    def __init__(self, height: int = OCR_HEIGHT, lang: str = "eng") -> None:
        self.height, self.lang = height, lang
        self._api = None
        if importlib.util.find_spec("tesserocr") is not None:
            import tesserocr

            try:
                self._api = tesserocr.PyTessBaseAPI(lang=lang, psm=tesserocr.PSM.RAW_LINE)
            except RuntimeError as err:
                raise UserError(
                    f"tesserocr cannot start Tesseract with language {lang!r} "
                    f"(metrics.ocr.tesseract_lang): {err}."
                ) from None
            self.description = (
                f"tesseract {tesserocr.tesseract_version().split()[1]} via tesserocr (psm 13, {lang})"
            )
        elif importlib.util.find_spec("pytesseract") is not None:
            import pytesseract

            try:
                tess_version = pytesseract.get_tesseract_version()
            except pytesseract.TesseractNotFoundError:
                raise UserError(
                    "metrics.ocr.backend=tesseract found pytesseract but not the tesseract program; "
                    "install tesseract-ocr (with tesseract-ocr-eng) or use metrics.ocr.backend=rapidocr."
                ) from None
            self.description = f"tesseract {tess_version} via pytesseract (psm 13, {lang})"
        else:
            raise UserError(
                "metrics.ocr.backend=tesseract needs tesserocr or pytesseract with Tesseract installed "
                "(e.g. apt install tesseract-ocr tesseract-ocr-eng; pip install tesserocr); "
                "or use metrics.ocr.backend=rapidocr."
            )

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        texts = []
        for image in images:
            line = prepare_line(image, self.height)
            if self._api is not None:
                self._api.SetImage(line)
                text = self._api.GetUTF8Text()
            else:
                import pytesseract

                text = pytesseract.image_to_string(line, lang=self.lang, config="--psm 13")
            texts.append(text.strip())
        return texts


class TrocrBackend:
    """A TrOCR model directory read offline; the PIL image processor works without torchvision."""

    def __init__(
        self,
        model_dir: str | Path | None,
        height: int = OCR_HEIGHT,
        device: str = "cpu",
        batch_size: int = 8,
        max_new_tokens: int = 64,
    ) -> None:
        if not model_dir:
            raise UserError("metrics.ocr.backend=trocr needs metrics.ocr.trocr_dir=<local TrOCR directory>.")
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise UserError(f"The TrOCR directory {path} (metrics.ocr.trocr_dir) has no config.json.")
        from transformers import AutoProcessor, VisionEncoderDecoderModel

        try:
            self.processor = AutoProcessor.from_pretrained(path, backend="pil")
            self.model = VisionEncoderDecoderModel.from_pretrained(path).to(device).eval()
        except (OSError, ValueError) as err:
            raise UserError(f"The TrOCR directory {path} cannot be loaded offline ({err}).") from None
        self.height, self.device = height, device
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.description = f"trocr from {path.name} ({height} px lines, greedy, {max_new_tokens} tokens max)"

    @torch.inference_mode()
    def read(self, images: Sequence[Image.Image]) -> list[str]:
        texts: list[str] = []
        for start in range(0, len(images), self.batch_size):
            lines = [prepare_line(im, self.height) for im in images[start : start + self.batch_size]]
            pixels = self.processor(images=lines, return_tensors="pt").pixel_values.to(self.device)
            ids = self.model.generate(
                pixels, max_new_tokens=self.max_new_tokens, num_beams=1, do_sample=False
            )
            texts += [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return texts


def build_ocr(
    backend: str,
    height: int = OCR_HEIGHT,
    trocr_dir: str | None = None,
    tesseract_lang: str = "eng",
    device: str = "cpu",
    batch_size: int = 8,
    max_new_tokens: int = 64,
) -> OcrBackend:
    """The backend named by metrics.ocr.backend."""
    if backend == "rapidocr":
        return RapidOcrBackend(height)
    if backend == "tesseract":
        return TesseractBackend(height, tesseract_lang)
    if backend == "trocr":
        return TrocrBackend(trocr_dir, height, device, batch_size, max_new_tokens)
    raise UserError(f"metrics.ocr.backend={backend!r} is not one of {', '.join(BACKENDS)}.")
