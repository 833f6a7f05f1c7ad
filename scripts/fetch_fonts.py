"""Fetch Google Fonts families from the npm registry as .ttf files, for `data.font_dirs`.

    .venv/bin/python scripts/fetch_fonts.py --out fonts/extra allura alex-brush parisienne

    .venv/bin/python scripts/fetch_fonts.py --out fonts/handwriting --preset handwriting

Each family name is a `@fontsource/<name>` package (Google Fonts' name in lower case, spaces as hyphens);
`--preset handwriting` names the 110 handwriting and script families `experiment=legible_fonts` trains its
VAE on (none of them a validation or test family of the default synthetic data).
Every upright weight of its latin subset becomes `<out>/<name>/<name>-<weight>.ttf`, converted from the
package's WOFF files with fontTools (in the test extra), all weights under the family name of the package
(Google's static files name some weights as families of their own, "Merienda Black"). Needs `npm` and the
npm registry; training then reads the folder offline: `"data.font_dirs=[fonts/extra]"`
(conf/data/synthetic.yaml). A family that fails leaves nothing behind; the others are still fetched, and the
script ends with exit status 2 and the names that failed.
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
# CSS weight -> the style name `imuru_pl.data.fonts` reads a face's weight from
STYLE_NAMES = {100: "Thin", 200: "ExtraLight", 300: "Light", 400: "Regular", 500: "Medium", 600: "SemiBold",
               700: "Bold", 800: "ExtraBold", 900: "Black"}
# Google Fonts handwriting and script families on the npm registry (@fontsource), for the line VAE's
# training hands (docs/legibility.md). Left out: the eleven font packages of conf/data/synthetic.yaml (among
# them the validation family kalam and the test families great_vibes and yellowtail).
PRESETS = {
    "handwriting": (
        "alex-brush allison allura architects-daughter arizonia babylonica bad-script ballet bilbo "
        "birthstone bonbon butterfly-kids calligraffitti carattere caveat-brush cedarville-cursive charm "
        "comforter coming-soon cookie corinthia covered-by-your-grace crafty-girls damion dawning-of-a-new-day "
        "dr-sugiyama engagement ephesis estonia euphoria-script fondamento gaegu give-you-glory "
        "gloria-hallelujah gochi-hand grand-hotel gwendolyn handlee herr-von-muellerhoff homemade-apple "
        "hurricane imperial-script ingrid-darling inspiration island-moments italianno just-another-hand "
        "just-me-again-down-here kaushan-script kings kristi la-belle-aurore league-script leckerli-one "
        "licorice love-light loved-by-the-king lovers-quarrel luxurious-script marck-script mea-culpa meddon "
        "merienda monsieur-la-doulaise montez moon-dance mr-dafoe mr-de-haviland mrs-saint-delafield neucha "
        "niconne norican nothing-you-could-do over-the-rainbow parisienne patrick-hand petit-formal-script "
        "pinyon-script playball qwigley rancho reenie-beanie rochester rock-salt rouge-script ruthie "
        "sacramento sassy-frass schoolbell seaweed-script send-flowers shadows-into-light-two short-stack "
        "sofia stalemate style-script sue-ellen-francisco sunshiney swanky-and-moo-moo tangerine "
        "the-girl-next-door the-nautigal vibur vujahday-script waiting-for-the-sunrise walter-turncoat "
        "water-brush whisper windsong yesteryear"
    ).split(),
}


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
    """Convert each WOFF to a .ttf under dest (created), every weight named as one family."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError as err:
        raise UserError("fontTools is needed to convert the fonts: pip install fonttools.") from err
    fonts = {}
    for weight, data in sorted(woffs.items()):
        try:
            fonts[weight] = TTFont(io.BytesIO(data))
        except Exception as err:  # fontTools raises several kinds for a damaged file
            raise UserError(f"The {weight} weight of {name} is not a readable font file ({err}).") from err
    regular = fonts[min(fonts, key=lambda w: abs(w - 400))]
    family = regular["name"].getDebugName(1) or name
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for weight, font in fonts.items():
        one_family(font, family, STYLE_NAMES.get(weight, "Regular"))
        font.flavor = None
        path = dest / f"{name}-{weight}.ttf"
        font.save(str(path))
        paths.append(path)
    return paths


def one_family(font, family: str, style: str) -> None:
    """Name the font's family and style (name IDs 1 and 2) in every record, dropping typographic names."""
    table = font["name"]
    for record in table.names:
        if record.nameID in (1, 2):
            record.string = family if record.nameID == 1 else style
    for name_id in (16, 17):
        table.removeNames(nameID=name_id)


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
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a named list of families (added to any given)")
    parser.add_argument("families", nargs="*", help="@fontsource package names, e.g. alex-brush")
    args = parser.parse_args()
    names = list(dict.fromkeys([*(PRESETS[args.preset] if args.preset else []), *args.families]))
    if not names:
        parser.error("name at least one family, or --preset")
    bad = next((name for name in names if not NAME.fullmatch(name)), None)
    if bad is not None or shutil.which("npm") is None:  # said once, before anything is fetched
        error = (f"{bad!r} is not a font package name (lower case, words joined by hyphens)." if bad else
                 "npm is not installed: it fetches the font packages (install Node.js and npm).")
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    created = not out.exists()
    failed = []
    for name in names:
        try:
            paths = fetch(name, out)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"{name}: {', '.join(p.name for p in paths)}")
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if failed:
        print(f"error: {len(failed)} of {len(names)} families were not fetched: {', '.join(failed)}.",
              file=sys.stderr)
        return 2
    print(f"use: \"data.font_dirs=[{out}]\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
