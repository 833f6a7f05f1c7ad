"""The styled-HTG ("SHTG") test sets of the HWD library: one gzipped JSON list of samples per set.

Each sample is `{"style_ids": [...], "gen_id": "...", "text": "...", "dst": "<author>/<name>.png"}`
(older files say `word` for `text`): write `text` in the hand of the `style_ids` lines, save it at `dst`, and
compare it with the real line `gen_id`. Images are found by id, the file stem, anywhere under the set's image
folder; the author is `dst`'s folder. The library takes `style_ids[i % len(style_ids)]` for i < num_style_samples.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from imuru_pl.data.transcriptions import IMAGE_SUFFIXES
from imuru_pl.errors import UserError

LIBRARY_SETS = "IAM lines, CVL lines, RIMES lines or Karaoke lines"


@dataclass(frozen=True)
class ShtgSample:
    text: str
    gen_id: str
    dst: str  # "<author>/<name>.png"
    style_ids: tuple[str, ...]

    @property
    def author(self) -> str:
        return Path(self.dst).parent.name

    def styles(self, count: int) -> tuple[str, ...]:
        """The style ids the library hands a generator asking for `count` of them."""
        return tuple(self.style_ids[i % len(self.style_ids)] for i in range(count))


def _not_a_set(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not a styled-HTG set file (a gzipped JSON list of samples with style_ids, "
                     f"gen_id, text and dst, as the HWD library's {LIBRARY_SETS}): {why}.")


def _sample(path: Path, index: int, entry: object) -> ShtgSample:
    if not isinstance(entry, dict):
        raise _not_a_set(path, f"entry {index} is a {type(entry).__name__}, not an object")
    text = entry.get("text", entry.get("word"))
    missing = [k for k, v in (("text", text), ("gen_id", entry.get("gen_id")), ("dst", entry.get("dst")),
                              ("style_ids", entry.get("style_ids"))) if v is None]
    if missing:
        raise _not_a_set(path, f"entry {index} has no {', '.join(missing)}")
    style_ids = entry["style_ids"]
    if not isinstance(style_ids, list) or not style_ids or not all(isinstance(s, str) for s in style_ids):
        raise _not_a_set(path, f"entry {index}'s style_ids is not a non-empty list of image ids")
    if not all(isinstance(entry[k], str) for k in ("gen_id", "dst")) or not isinstance(text, str):
        raise _not_a_set(path, f"entry {index}'s text, gen_id and dst must be strings")
    parts = Path(entry["dst"]).parts
    if len(parts) != 2 or any(p in (".", "..") for p in parts) or Path(entry["dst"]).suffix.lower() != ".png":
        raise _not_a_set(path, f"entry {index}'s dst {entry['dst']!r} is not <author>/<name>.png")
    return ShtgSample(text, entry["gen_id"], Path(entry["dst"]).as_posix(), tuple(style_ids))


def read_set(path: str | os.PathLike) -> list[ShtgSample]:
    """Every sample of a set file (.json.gz or plain .json), checked; one sentence for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"The set file {path} does not exist or is not a file.")
    try:
        raw = path.read_bytes()
        data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise _not_a_set(path, f"it cannot be read ({type(err).__name__})") from None
    except (UnicodeDecodeError, ValueError):
        raise _not_a_set(path, "it is not JSON") from None
    if not isinstance(data, list) or not data:
        raise _not_a_set(path, "it holds no list of samples")
    samples = [_sample(path, i, entry) for i, entry in enumerate(data)]
    seen: set[str] = set()
    for sample in samples:
        if sample.dst in seen:
            raise _not_a_set(path, f"two samples share the dst {sample.dst}")
        seen.add(sample.dst)
    return samples


def write_set(path: str | os.PathLike, samples: Iterable[ShtgSample]) -> Path:
    """Write samples as the library's gzipped JSON list (written beside `path`, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{**asdict(s), "style_ids": list(s.style_ids)} for s in samples]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(gzip.compress(json.dumps(entries, ensure_ascii=False).encode("utf-8"), mtime=0))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def index_images(folder: str | os.PathLike) -> dict[str, Path]:
    """id (file stem) -> image path, for every image anywhere under `folder` (the first one of a stem wins)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"The image folder {folder} does not exist or is not a folder.")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file():
            found.setdefault(path.stem, path)
    if not found:
        raise UserError(f"The image folder {folder} holds no images (PNG, JPEG, ...), at any depth.")
    return found


def simplify_text(text: str, charset: str) -> str:
    """The text with what `charset` lacks mapped as the HWD library does: NFD decomposition (an accented
    letter becomes its base letter and a combining mark), then only characters of the charset are kept."""
    allowed = set(charset) | {" "}
    kept = "".join(c for c in unicodedata.normalize("NFD", text) if c in allowed)
    return " ".join(kept.split())
