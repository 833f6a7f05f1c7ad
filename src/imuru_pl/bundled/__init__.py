"""Trained artefacts shipped inside the package (no download): `line_vae`, the line VAE every CPU recipe
starts from, and `starter`, a tiny Imuru trained with the project's CPU recipe over it.

A bundled name is accepted wherever a directory is (`vae.pretrained=line_vae`, `model_dir=starter`,
`ImuruPipeline.from_pretrained("starter")`); a local directory of the same name comes first. Each artefact's
folder keeps the config and the evaluation of the run that made it (`recipe.json`), and
`python run.py task=bundle ...` (tasks/bundle.py) is how they are put here. docs/vae.md (the VAE) and
docs/legibility.md (the starter) say which command and commit re-create them.
"""

from __future__ import annotations

from pathlib import Path

from imuru_pl.errors import UserError

ROOT = Path(__file__).resolve().parent
NAMES = {"line_vae": "the bundled line VAE", "starter": "the bundled starter Imuru"}
RECREATE = {"line_vae": "docs/vae.md", "starter": "docs/legibility.md"}  # where the command that makes each is
RECIPE = "recipe.json"  # beside the weights: the command, commit, config and evaluation that made them


def bundled_dir(name: str) -> Path:
    """The package folder of a bundled artefact (it may not hold one yet)."""
    if name not in NAMES:
        raise UserError(f"{name!r} is not a bundled artefact; the bundled ones are {', '.join(NAMES)}.")
    return ROOT / name


def is_bundled(name: str) -> bool:
    """True when the artefact's files are in this install."""
    return name in NAMES and (bundled_dir(name) / "config.json").is_file()


def resolve(value: str | Path, local: str | Path | None = None) -> Path:
    """A directory as given (`local`: where it lies when relative paths are taken from elsewhere), or the
    package folder when `value` is a bundled name and no local directory of that name exists."""
    path = Path(local if local is not None else value).expanduser()
    if str(value) not in NAMES or path.exists():
        return path
    if not is_bundled(str(value)):
        raise UserError(f"{NAMES[str(value)]} ({value!r}) is not part of this install: re-create it with the "
                        f"command in {RECREATE[str(value)]}, or give a directory.")
    return bundled_dir(str(value))
