"""The IAM handwriting database at line level, read from its official layout.

    <root>/ascii/lines.txt   id ok|err graylevel components x y w h word|word|...   (# lines are comments)
    <root>/ascii/forms.txt   form_id writer_id ...                                    (# lines are comments)
    <root>/lines/a01/a01-000u/a01-000u-00.png

Splits come from split files (`data.splits.train/val/test`: text files of line ids or form ids, one per line,
such as the Aachen or RWTH splits), or, without them, from a seeded writer-disjoint draw.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from imuru_pl.data.real import (
    LineRecord,
    LineTable,
    RealLineDataModule,
    SkipCounter,
    SplitPlan,
    normalize_text,
    split_writers,
)
from imuru_pl.data.synthetic import SPLITS
from imuru_pl.errors import UserError

log = logging.getLogger(__name__)

LINES_FILE = Path("ascii") / "lines.txt"
FORMS_FILE = Path("ascii") / "forms.txt"
LINE_FIELDS = 9  # id, status, graylevel, components, x, y, w, h, transcription
IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|tiff?|bmp|webp)$", re.IGNORECASE)
# IAM separates punctuation and English clitics from their word ("Mr. Foot 's ." ); joined back on request.
DETACHED = re.compile(r" (?=[.,;:!?)\]]|'(?:s|t|d|m|ll|re|ve)\b|n't\b)")
OPENING = re.compile(r"([(\[]) ")


def form_of(line_id: str) -> str:
    """a01-000u-00 -> a01-000u."""
    return line_id.rsplit("-", 1)[0]


def line_image(root: Path, line_id: str) -> Path:
    """lines/a01/a01-000u/a01-000u-00.png."""
    form = form_of(line_id)
    return root / "lines" / form.split("-", 1)[0] / form / f"{line_id}.png"


def transcription_text(tokens: list[str], detokenize: bool) -> str:
    """The words of a lines.txt row (`|` separates words; a token may hold a space) as plain text."""
    text = normalize_text(html.unescape(" ".join(tokens).replace("|", " ")))
    if detokenize:
        text = OPENING.sub(r"\1", DETACHED.sub("", text))
    return text


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"Cannot read {path} ({err.strerror or err}).") from None
    return [
        (n, line.split())
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.startswith("#")
    ]


def read_forms(path: Path) -> dict[str, str]:
    """form id -> writer id, from forms.txt."""
    return {fields[0]: fields[1] for _, fields in _rows(path) if len(fields) >= 2}


def read_id_list(path: str | Path, what: str) -> set[str]:
    """Ids listed one per line in a split file (blank lines and `#` comments ignored, suffixes dropped)."""
    path = Path(str(path)).expanduser()
    try:
        lines = path.read_text("utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"The split file {path} ({what}) does not exist.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"The split file {path} ({what}) cannot be read ({err}).") from None
    ids = {
        IMAGE_SUFFIX.sub("", Path(line.split()[0]).name)
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    }
    if not ids:
        raise UserError(f"The split file {path} ({what}) lists no ids.")
    return ids


class IAMDataModule(RealLineDataModule):
    """IAM lines as style/target pairs of the same writer (`data=iam data.root=<IAM folder>`)."""

    dataset_name = "IAM"
    root_help = "the IAM folder (the one holding ascii/ and lines/)"

    def __init__(
        self,
        root: str | None = None,
        splits: Mapping[str, str | None] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        skip_err_lines: bool = True,
        detokenize: bool = True,
        **common,
    ):
        super().__init__(root, **common)
        for relative in (LINES_FILE, FORMS_FILE):
            if not (self.root / relative).is_file():
                raise UserError(f"{self.root} is not an IAM folder: {relative.as_posix()} is missing.")
        if not (self.root / "lines").is_dir():
            raise UserError(f"{self.root} is not an IAM folder: the lines/ image folder is missing.")
        splits = {k: v for k, v in dict(splits or {}).items() if v}
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise UserError(f"data.splits names unknown split(s) {sorted(unknown)}; use train, val and test.")
        if splits and set(splits) != set(SPLITS):
            raise UserError("data.splits needs a file for each of train, val and test (or none of them).")
        self.split_files = {split: splits[split] for split in SPLITS if split in splits}
        self.split_ids = {
            split: read_id_list(path, f"data.splits.{split}") for split, path in self.split_files.items()
        }
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.skip_err_lines, self.detokenize = bool(skip_err_lines), bool(detokenize)

    def read_index(self, skipped: SkipCounter) -> list[LineRecord]:
        writers = read_forms(self.root / FORMS_FILE)
        records, flagged = [], 0
        for number, fields in _rows(self.root / LINES_FILE):
            if len(fields) < LINE_FIELDS:
                skipped.add("malformed rows of ascii/lines.txt", f"row {number}")
                continue
            line_id, status = fields[0], fields[1]
            if status != "ok" and self.skip_err_lines:
                flagged += 1
                continue
            writer = writers.get(form_of(line_id))
            if writer is None:
                skipped.add("lines whose form has no writer in ascii/forms.txt", line_id)
                continue
            text = transcription_text(fields[LINE_FIELDS - 1 :], self.detokenize)
            if not text:
                skipped.add("lines with an empty transcription", line_id)
                continue
            records.append(LineRecord(line_image(self.root, line_id), text, writer, f"iam/{line_id}"))
        if flagged:
            log.info(
                "IAM: %d lines flagged 'err' (word segmentation) left out by data.skip_err_lines=true.",
                flagged,
            )
        return records

    def plan_splits(self, table: LineTable) -> SplitPlan:
        ids = [r.key.split("/", 1)[1] for r in table.records]
        if not self.split_files:
            assignment = split_writers(
                table.writer_ids, self.val_fraction, self.test_fraction, self.seed, self.label
            )
            log.info("IAM: no split files; writer-disjoint split drawn with seed %d.", self.seed)
            return SplitPlan(table, [(assignment[r.writer],) for r in table.records])
        split_of: list[tuple[str, ...]] = []
        for line_id in ids:
            found = tuple(
                s for s in SPLITS if line_id in self.split_ids[s] or form_of(line_id) in self.split_ids[s]
            )
            split_of.append(found)
        doubled = [line_id for line_id, found in zip(ids, split_of, strict=True) if len(found) > 1]
        if doubled:
            raise UserError(
                f"The split files list {len(doubled)} IAM line(s) in two splits, e.g. {doubled[0]}."
            )
        unused = sum(1 for found in split_of if not found)
        if unused:
            log.info("IAM: %d usable lines are in none of the split files and are not used.", unused)
        splits_of_writer: dict[str, set[str]] = {}
        for record, found in zip(table.records, split_of, strict=True):
            splits_of_writer.setdefault(record.writer, set()).update(found)
        shared = sum(1 for found in splits_of_writer.values() if len(found) > 1)
        if shared:
            log.info("IAM: %d writer(s) have lines in more than one split of the split files.", shared)
        return SplitPlan(table, split_of)
