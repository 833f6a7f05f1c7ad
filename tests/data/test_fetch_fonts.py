"""scripts/fetch_fonts.py: a @fontsource package's latin WOFF files become .ttf files data.font_dirs reads."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import pytest
from cli_helpers import REPO

from imuru_pl.data.fonts import discover_families, package_folder
from imuru_pl.errors import UserError

TTFont = pytest.importorskip("fontTools.ttLib").TTFont
sys.path.insert(0, str(REPO / "scripts"))
from fetch_fonts import latin_woffs, write_ttfs  # noqa: E402


def woff_of(ttf, family: str | None = None) -> bytes:
    font = TTFont(str(ttf))
    if family:  # how Google's static files name some weights: a family of their own, style "Regular"
        for record in font["name"].names:
            if record.nameID in (1, 2, 16, 17):
                record.string = family if record.nameID in (1, 16) else "Regular"
    font.flavor = "woff"
    buffer = io.BytesIO()
    font.save(buffer)
    return buffer.getvalue()


def fontsource_tarball(path, name: str, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as archive:
        for member, data in {"package/package.json": b"{}", **files}.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_latin_upright_woffs_become_one_family_of_ttf_weights(tmp_path):
    ttf = sorted(package_folder("fontpkg_kalam").rglob("*.ttf"))[0]
    woff = woff_of(ttf)
    tarball = fontsource_tarball(tmp_path / "kalam.tgz", "kalam", {
        "package/files/kalam-latin-400-normal.woff": woff,
        "package/files/kalam-latin-700-normal.woff": woff,
        "package/files/kalam-latin-400-italic.woff": woff,  # not upright: left out
        "package/files/kalam-latin-ext-400-normal.woff": woff,  # not the latin subset: left out
    })
    woffs = latin_woffs(tarball, "kalam")
    assert sorted(woffs) == [400, 700]
    paths = write_ttfs(woffs, "kalam", tmp_path / "fonts" / "kalam")
    assert [p.name for p in paths] == ["kalam-400.ttf", "kalam-700.ttf"]
    assert set(TTFont(str(paths[0])).getBestCmap()) == set(TTFont(str(ttf)).getBestCmap())
    families = discover_families(font_dirs=[str(tmp_path / "fonts")])
    assert [f.name for f in families] == ["kalam"] and len(families[0].faces) == 2


def test_weights_named_as_families_of_their_own_become_one_family(tmp_path):
    ttf = sorted(package_folder("fontpkg_kalam").rglob("*.ttf"))[0]
    woffs = {300: woff_of(ttf, "Kalam Light"), 400: woff_of(ttf, "Kalam"), 900: woff_of(ttf, "Kalam Black")}
    write_ttfs(woffs, "kalam", tmp_path / "fonts" / "kalam")
    families = discover_families(font_dirs=[str(tmp_path / "fonts")])
    assert [f.name for f in families] == ["kalam"]
    assert [face.weight for face in families[0].faces] == [300, 400, 900]


def test_a_package_without_latin_woffs_or_with_a_damaged_one_is_a_user_error(tmp_path):
    tarball = fontsource_tarball(tmp_path / "x.tgz", "x", {"package/files/x-latin-400-normal.woff2": b"0"})
    with pytest.raises(UserError, match="no latin upright .woff"):
        latin_woffs(tarball, "x")
    with pytest.raises(UserError, match="The 400 weight of x is not a readable font file"):
        write_ttfs({400: b"not a font"}, "x", tmp_path / "x")


def test_without_npm_the_script_says_so_and_leaves_no_folder(tmp_path):
    out = tmp_path / "fonts"
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # the venv's python, no npm
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_fonts.py"), "--out", str(out),
                             "allura"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and "npm is not installed" in result.stderr
    assert not out.exists()
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_fonts.py"), "--out", str(out),
                          "Great Vibes"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "not a font package name" in bad.stderr and not out.exists()
    preset = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_fonts.py"), "--out", str(out),
                             "--preset", "handwriting"], capture_output=True, text=True, env=env, timeout=120)
    assert preset.returncode == 2 and preset.stderr.count("npm is not installed") == 1 and not out.exists()


def test_the_handwriting_preset_holds_none_of_the_default_families():
    from fetch_fonts import PRESETS

    from imuru_pl.data.synthetic import DEFAULT_FONT_PACKAGES

    preset = PRESETS["handwriting"]
    defaults = {p.removeprefix("fontpkg_").replace("_", "-") for p in DEFAULT_FONT_PACKAGES}
    assert len(preset) == len(set(preset)) == 110 and not defaults & set(preset)
    assert {"great-vibes", "yellowtail", "kalam"} <= defaults
