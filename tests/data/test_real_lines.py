"""Shared helpers for the real-data tests (miniature IAM tree, HWD folder, tiny model), plus the file checks.

Lines are drawn with PIL in handwriting fonts on grey paper at scan-like heights, so the loader's scaling and
background normalisation have real work to do.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import fontpkg_caveat
import fontpkg_delius
import fontpkg_indie_flower
import fontpkg_kalam
import fontpkg_satisfy
import lightning as L
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw, ImageFont

from imuru_pl.data.real import LineRecord, SkipCounter, probe, usable_lines
from imuru_pl.models.imuru import Imuru
from imuru_pl.models.imuru_module import ImuruModule
from imuru_pl.models.vae import LineVAE
from imuru_pl.pipeline import ImuruPipeline

FONTS = [
    fontpkg_kalam.ROOT / "files" / "Kalam-Regular.ttf",
    fontpkg_caveat.ROOT / "files" / "Caveat[wght].ttf",
    fontpkg_delius.ROOT / "files" / "Delius-Regular.ttf",
    fontpkg_indie_flower.ROOT / "files" / "IndieFlower-Regular.ttf",
    fontpkg_satisfy.ROOT / "files" / "Satisfy-Regular.ttf",
]
TINY_T5 = {
    "d_model": 32,
    "num_layers": 1,
    "num_decoder_layers": 1,
    "num_heads": 2,
    "d_kv": 16,
    "d_ff": 64,
    "dropout_rate": 0.0,
}
OPTIM = {"lr": 1e-3, "weight_decay": 0.0, "scheduler": "constant"}


def draw_line(
    text: str,
    font_index: int,
    height: int = 100,
    paper: int | tuple = 215,
    ink: int | tuple = 50,
    pad_right: int = 0,
) -> Image.Image:
    """A scanned-looking line: dark text on grey paper, `height` px high, margins on both sides."""
    font = ImageFont.truetype(str(FONTS[font_index % len(FONTS)]), int(height * 0.55))
    x0, y0, x1, y1 = font.getbbox(text)
    mode = "RGB" if isinstance(paper, tuple) else "L"
    img = Image.new(mode, (x1 - x0 + 40 + pad_right, height), paper)
    ImageDraw.Draw(img).text((20 - x0, (height - (y1 - y0)) // 2 - y0), text, font=font, fill=ink)
    return img


# --- miniature IAM tree ------------------------------------------------------------------------------
# form -> (writer id, font); each form has lines 00..03 (04 is a special case per form, see IAM_SPECIAL).
IAM_FORMS = {
    "a01-000u": ("000", 0),
    "a01-001": ("001", 1),
    "b02-010": ("002", 2),
    "c03-021": ("003", 3),
    "d04-030": ("004", 4),
}
IAM_TEXTS = [
    ["A|MOVE|to|stop|Mr.|Gaitskell|.", "from|nominating|any|more", "Labour|life|Peers|is", "to|be|made|at|a"],
    ["meeting|of|Labour|M|Ps", "tomorrow|,|Mr.|Michael", "Foot|has|put|down", "a|resolution|on|the"],
    ["subject|and|he|is", "to|be|backed|by", "Mr.|Will|Griffiths|'s", "colleagues|in|the|House"],
    ["Though|they|may|gather", "some|Left-wing|support|!", "the|same|words|here", "a|large|majority|of"],
    ["Labour|M|Ps|are", "likely|to|turn|down", "the|same|words|here", "the|Foot-Griffiths|resolution|."],
]
LINES_HEADER = """#--- lines.txt ---------------------------------------------------------------#
#
# iam database line information
#
# format: a01-000u-00 ok 154 19 408 746 1663 91 A|MOVE|to|stop|Mr.|Gaitskell|from
#
#     a01-000u-00  -> line id for form a01-000u
#     ok              -> result of word segmentation
#                            ok: line is correctly segmented
#                            err: segmentation of line has one or more errors
#
"""
FORMS_HEADER = """#--- forms.txt ---------------------------------------------------------------#
#
# format: a01-000u 000 2 prt 7 5 52 36
#
#     a01-000u  -> form id
#     000       -> writer id
#
"""
# The fifth line of each form, each unusable in its own way (the err-flagged one is usable when asked for).
IAM_SPECIAL = {
    "a01-000u-04": "err",  # flagged err, image fine
    "a01-001-04": "missing",  # no image file
    "b02-010-04": "empty",  # 0-byte image
    "c03-021-04": "unreadable",  # not an image
    "d04-030-04": "wide",  # 64 px high it is wider than max_width
}
IAM_MAX_WIDTH = 1024


def line_path(root: Path, line_id: str) -> Path:
    form = line_id.rsplit("-", 1)[0]
    return root / "lines" / form.split("-")[0] / form / f"{line_id}.png"


def make_iam(root: Path) -> Path:
    """An IAM tree in the official layout: 5 writers x 4 good lines, one line of each broken kind."""
    rows, forms = [LINES_HEADER], [FORMS_HEADER]
    for (form, (writer, font)), texts in zip(IAM_FORMS.items(), IAM_TEXTS, strict=True):
        forms.append(f"{form} {writer} 2 prt 5 4 20 16\n")
        for index, tokens in enumerate([*texts, "some|last|words"]):
            line_id = f"{form}-{index:02d}"
            special = IAM_SPECIAL.get(line_id)
            path = line_path(root, line_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            text = tokens.replace("|", " ")
            image = draw_line(text, font, height=90 + 5 * index, pad_right=2600 if special == "wide" else 0)
            if special == "empty":
                path.write_bytes(b"")
            elif special == "unreadable":
                path.write_text("not a png")
            elif special != "missing":
                image.save(path)
            status = "err" if special == "err" else "ok"
            rows.append(f"{line_id} {status} 154 19 408 746 {image.width} {image.height} {tokens}\n")
    rows.append("z99-999-00 ok 154 19 408 746 100 90 no|form|for|me\n")  # its form is not in forms.txt
    rows.append("broken row\n")
    (root / "ascii").mkdir(parents=True, exist_ok=True)
    (root / "ascii" / "lines.txt").write_text("".join(rows))
    (root / "ascii" / "forms.txt").write_text("".join(forms))
    return root


# --- HWD-layout folder ---------------------------------------------------------------------------------
FOLDER_TEXTS = ["hello there", "quick brown fox", "jumps over it", "lazy dogs sleep", "write me a line"]


def make_folder(root: Path, writers: int = 3, lines: int = 4, photo: str | None = None) -> Path:
    """`writers` writers x `lines` lines in <root>/<writer>/<n>.png, plus transcriptions.json.

    `photo`: None (grey scans), "tinted" (blue ink on yellowish, grainy paper) or "uneven" (the same, with the
    light falling off to 80 % across the line, as a phone photo might).
    """
    transcriptions = {}
    for w in range(writers):
        (root / f"writer{w}").mkdir(parents=True, exist_ok=True)
        for i in range(lines):
            rel = f"writer{w}/{i:02d}.png"
            text = FOLDER_TEXTS[i % len(FOLDER_TEXTS)]
            if photo:
                img = draw_line(text, w, height=120, paper=(235, 225, 180), ink=(30, 40, 140))
                rng = np.random.default_rng(w * 100 + i)
                pixels = np.asarray(img, dtype=np.float64) + rng.normal(0, 4, (img.height, img.width, 1))
                if photo == "uneven":
                    pixels *= np.linspace(1.0, 0.8, img.width)[None, :, None]
                img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            else:
                img = draw_line(text, w, height=80 + 10 * i)
            img.save(root / rel)
            transcriptions[rel] = text
    (root / "transcriptions.json").write_text(json.dumps(transcriptions, indent=1))
    return root


# --- tiny model for one training step ---------------------------------------------------------------------
def tiny_vae(seed: int = 0) -> LineVAE:
    torch.manual_seed(seed)
    return LineVAE(
        AutoencoderKL(
            in_channels=3,
            out_channels=1,
            latent_channels=1,
            block_out_channels=[8, 8, 16, 16],
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            layers_per_block=1,
            norm_num_groups=4,
            mid_block_add_attention=False,
            sample_size=64,
            scaling_factor=1.0,
        )
    )


def tiny_pipeline(datamodule) -> ImuruPipeline:
    """A tiny VAE with its constants measured on the data's lines, and a tiny Imuru that uses them."""
    vae = tiny_vae()
    vae.measure_stop_constants(datamodule.train_dataloader(), max_lines=4, blank_widths=(64,))
    model = Imuru(t5=TINY_T5, max_new_columns=12)
    model.use_vae_stats(vae)
    return ImuruPipeline(model, vae)


def train_one_step(datamodule) -> tuple[ImuruModule, L.Trainer]:
    """One optimiser step of a tiny Imuru on the data, then a validation pass."""
    pipeline = tiny_pipeline(datamodule)
    module = ImuruModule(pipeline.model.train(), pipeline.vae, OPTIM)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 1
    changed = [k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("decoder.") for k in changed) and "t5_to_vae.weight" in changed
    [metrics] = trainer.validate(module, datamodule=datamodule, verbose=False)
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    return module, trainer


def warnings_of(caplog, name: str = "imuru_pl.data.real") -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name and r.levelno == logging.WARNING]


# --- the checks that do not need a whole dataset ----------------------------------------------------------
def test_probe_tells_each_broken_file_apart(tmp_path):
    good = tmp_path / "good.png"
    draw_line("fine", 0).save(good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    Image.new("L", (40, 5), 255).save(tmp_path / "sliver.png")
    assert probe(good) == Image.open(good).size
    assert probe(tmp_path / "nothing.png") == "missing images"
    assert probe(tmp_path / "empty.png") == "empty files"
    assert probe(tmp_path / "text.png") == "unreadable files"
    assert probe(truncated) == "unreadable files"
    assert probe(tmp_path / "sliver.png").startswith("images smaller")


def test_wide_lines_are_dropped_not_cropped_and_everything_is_counted_once(tmp_path, caplog):
    draw_line("short one", 0, height=100).save(tmp_path / "short.png")
    draw_line("long one", 0, height=100, pad_right=900).save(tmp_path / "long.png")
    records = [LineRecord(tmp_path / f"{n}.png", n, "w", n) for n in ("short", "long", "gone")]
    skipped = SkipCounter("test set")
    with caplog.at_level(logging.WARNING):
        table = usable_lines(records, max_width=400, skipped=skipped)
        skipped.warn(len(records))
    assert [r.key for r in table.records] == ["short"]
    width, height = Image.open(tmp_path / "short.png").size
    assert table.widths.tolist() == [round(width * 64 / height)]
    assert skipped.counts == {"lines wider than data.max_width=400 px": 1, "missing images": 1}
    [warning] = warnings_of(caplog)
    assert "left out 2 of 3 lines" in warning.getMessage() and "max_width=400" in warning.getMessage()


@pytest.mark.parametrize("max_width", [None, 10_000])
def test_no_width_limit_keeps_every_readable_line(tmp_path, max_width):
    draw_line("long one", 0, height=100, pad_right=900).save(tmp_path / "long.png")
    table = usable_lines([LineRecord(tmp_path / "long.png", "t", "w", "k")], max_width, SkipCounter("x"))
    assert len(table) == 1
