"""Fetch Google Fonts families from the npm registry as .ttf files, for `data.font_dirs`.

    .venv/bin/python scripts/fetch_fonts.py --out fonts/extra allura alex-brush parisienne

Each family name is a `@fontsource/<name>` package (Google Fonts' name in lower case, spaces as hyphens).
Every upright weight of its latin subset becomes `<out>/<name>/<name>-<weight>.ttf`, converted from the
package's WOFF files with fontTools (in the test extra). Needs `npm` and the npm registry; training then
reads the folder offline: `"data.font_dirs=[fonts/extra]"` (conf/data/synthetic.yaml). A family that fails
leaves nothing behind.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from imuru_pl.errors import UserError

NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def latin_woffs(tarball: Path, name: str) -> dict[int, bytes]:
    """The latin-subset upright WOFF files of a @fontsource package, by weight."""
    pattern = re.compile(rf"package/files/{re.escape(name)}-latin-(\d+)-normal\.woff")
    found = {}
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            match = pattern.fullmatch(member.name)
            if match and member.isfile():
                found[int(match.group(1))] = archive.extractfile(member).read()
    if not found:
        raise UserError(f"The package @fontsource/{name} holds no latin upright .woff file.")
    return found


def write_ttfs(woffs: dict[int, bytes], name: str, dest: Path) -> list[Path]:
    """Convert each WOFF to a .ttf under dest (created)."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError as err:
        raise UserError("fontTools is needed to convert the fonts: pip install fonttools.") from err
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for weight, data in sorted(woffs.items()):
        try:
            font = TTFont(io.BytesIO(data))
        except Exception as err:  # fontTools raises several kinds for a damaged file
            raise UserError(f"The {weight} weight of {name} is not a readable font file ({err}).") from err
        font.flavor = None
        path = dest / f"{name}-{weight}.ttf"
        font.save(str(path))
        paths.append(path)
    return paths


def npm_pack(name: str, folder: Path) -> Path:
    """Download the @fontsource/<name> tarball into folder with npm."""
    if shutil.which("npm") is None:
        raise UserError("npm is not installed: it fetches the font packages (install Node.js and npm).")
    result = subprocess.run(["npm", "pack", f"@fontsource/{name}", "--pack-destination", str(folder)],
                            capture_output=True, text=True)
    tarballs = sorted(folder.glob("*.tgz"))
    if result.returncode != 0 or not tarballs:
        raise UserError(f"npm could not fetch @fontsource/{name}: is the name right, the registry reachable?")
    return tarballs[-1]


def fetch(name: str, out: Path) -> list[Path]:
    """One family into out/<name>, replacing an earlier copy only once the new one is complete."""
    if not NAME.fullmatch(name):
        raise UserError(f"{name!r} is not a font package name (lower case, words joined by hyphens).")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        staged = Path(tmp) / name
        write_ttfs(latin_woffs(npm_pack(name, Path(tmp)), name), name, staged)
        final = out / name
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    return sorted(final.glob("*.ttf"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to fill (one subfolder per family)")
    parser.add_argument("families", nargs="+", help="@fontsource package names, e.g. alex-brush")
    args = parser.parse_args()
    out = Path(args.out)
    created = not out.exists()
    try:
        for name in args.families:
            paths = fetch(name, out)
            print(f"{name}: {', '.join(p.name for p in paths)}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        return 2
    print(f"use: \"data.font_dirs=[{out}]\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
