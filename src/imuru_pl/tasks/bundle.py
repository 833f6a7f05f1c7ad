"""`python run.py task=bundle name=line_vae|starter source=<dir> [run_dir=<run>] [evaluation=[<json>, ...]]`:
put a trained artefact inside the package (imuru_pl/bundled/<name>/) with the recipe that made it.

`source` is a saved line VAE (`<run>/vae`) for `line_vae`, an exported model (`<run>/model`) for `starter`.
It must load before anything is copied. Beside the weights goes `recipe.json`: the training run's command and
config (from `run_dir`'s `.hydra/`), the stages before it when it trained on from a bundled VAE, the commit of
the project it was bundled from, the evaluation reports named, and each file's size and SHA-256. The starter's
T5 weights are stored in bfloat16 (`dtype=bf16`, half the size; they load into float32). `style_reader=<dir>`
(the starter only) puts a line reader in the model's `reader/` folder, which reads style lines for their widths
(`ImuruPipeline.read_style`); its metrics and the command of `style_reader_run_dir` go into the recipe.
`line_vae=<dir>` (the starter only) puts a later stage of the model's own VAE (one trained on from it with
`vae.init_from`) in the model's `vae/` folder: the model keeps the latent statistics and stop constants it was
trained with, and the better encoder and decoder draw its columns (docs/legibility.md measures both choices).
Without `source`, the bundled artefact itself is the source and its recipe is kept, the reader, VAE or
evaluations given added to it. The folder is built beside its place and swapped in at the end, so a failure
leaves the previous artefact as it was.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig
from safetensors.torch import load_file, save_file

from imuru_pl.bundled import RECIPE, ROOT, bundled_dir, is_bundled
from imuru_pl.errors import UserError
from imuru_pl.models.reader import LineReader
from imuru_pl.models.vae import LineVAE
from imuru_pl.pipeline import READER_SUBDIR, VAE_SUBDIR, ImuruPipeline
from imuru_pl.tasks.common import artefact_dir
from imuru_pl.tasks.train_reader import METRICS_FILE

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


def _commit() -> str | None:
    """The project's commit, when the package runs from a git checkout."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _relative(value: Any, root: str) -> Any:
    """`value` with the paths under the directory the command ran in written relative to it: a recipe
    describes the run, not the machine it ran on."""
    if isinstance(value, dict):
        return {k: _relative(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    return value.replace(root + "/", "").replace(root, ".") if isinstance(value, str) else value


def _run_recipe(run_dir: Path) -> dict[str, Any]:
    hydra = run_dir / ".hydra"
    if not (hydra / "config.yaml").is_file():
        raise UserError(f"run_dir={run_dir} is not a run directory: it has no .hydra/config.yaml.")
    overrides = yaml.safe_load((hydra / "overrides.yaml").read_text("utf-8")) or []
    return {"run_dir": run_dir.name, "command": " ".join(["python run.py", *map(str, overrides)]),
            "config": yaml.safe_load((hydra / "config.yaml").read_text("utf-8"))}


def _stages(run: dict[str, Any], commit: str | None) -> list[dict[str, Any]]:
    """The commands that made the artefact, oldest first: a stage trained on from an artefact with a recipe
    (`vae.init_from=line_vae`: the bundled VAE one stage further; `init_from=starter`: the starter Imuru
    trained on) inherits that recipe's stages."""
    config = run.get("config") or {}
    init = config.get("init_from") or (config.get("vae") or {}).get("init_from")
    earlier: list[dict[str, Any]] = []
    if init:
        try:
            path = artefact_dir(init)
            earlier = json.loads((path / RECIPE).read_text("utf-8")).get("stages", [])
        except (OSError, ValueError, UserError):
            earlier = []  # a VAE without a recipe (a run directory): its own command is in its run's .hydra/
    return [*earlier, {"command": run["command"], "commit": commit, "run_dir": run["run_dir"]}]


def _evaluations(paths: Any) -> dict[str, Any]:
    paths = list(paths) if isinstance(paths, (list, ListConfig)) else [paths] if paths else []
    reports = {}
    for item in paths:
        path = Path(to_absolute_path(str(item)))
        try:
            reports[f"{path.parent.name}/{path.name}"] = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"evaluation={item} is not a readable JSON report ({type(err).__name__}).") from None
    return reports


def _check(name: str, directory: Path) -> None:
    if name == "line_vae":
        LineVAE.from_pretrained(directory)
    else:
        ImuruPipeline.from_pretrained(directory)  # the model, its VAE and its reader, when it has one


def _drop_saved_paths(directory: Path) -> None:
    """diffusers writes where a model was loaded from into its config (`_name_or_path`): a path of the machine
    the artefact was made on, which the package does not ship."""
    for path in directory.rglob("config.json"):
        config = json.loads(path.read_text("utf-8"))
        if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")


def _to_bf16(path: Path) -> None:
    state = load_file(path)
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}, path)


def _files(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size,
                                                  "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != RECIPE}


def _reader(cfg: DictConfig, name: str) -> tuple[Path | None, dict[str, Any]]:
    """`style_reader=<dir>` checked (it loads; the starter only) and its part of the recipe."""
    if not cfg.get("style_reader"):
        return None, {}
    if name != "starter":
        raise UserError(f"style_reader= goes with name=starter (a model that plans its letters), not {name}.")
    directory = Path(to_absolute_path(str(cfg.style_reader)))
    LineReader.from_pretrained(directory, key="style_reader")
    entry: dict[str, Any] = {"source": f"{directory.parent.name}/{directory.name}", "commit": _commit()}
    if (directory / METRICS_FILE).is_file():
        entry["metrics"] = json.loads((directory / METRICS_FILE).read_text("utf-8"))
    if cfg.get("style_reader_run_dir"):
        run = _run_recipe(Path(to_absolute_path(str(cfg.style_reader_run_dir))))
        entry.update(run_dir=run["run_dir"], command=run["command"])
    return directory, entry


def _vae(cfg: DictConfig, name: str) -> tuple[Path | None, dict[str, Any]]:
    """`line_vae=<dir>` checked (it loads with its constants; the starter only) and its part of the recipe."""
    if not cfg.get("line_vae"):
        return None, {}
    if name != "starter":
        raise UserError(f"line_vae= goes with name=starter (a model over a VAE), not {name}.")
    directory = artefact_dir(cfg.line_vae)
    LineVAE.from_pretrained(directory)
    entry: dict[str, Any] = {"source": f"{directory.parent.name}/{directory.name}", "commit": _commit(),
                             "kept": "the model's latent statistics and stop constants (those it was trained with)"}
    if (directory / RECIPE).is_file():  # a bundled VAE: the commands that made it
        entry["stages"] = json.loads((directory / RECIPE).read_text("utf-8")).get("stages", [])
    return directory, entry


def _base(cfg: DictConfig, name: str) -> tuple[Path, dict[str, Any] | None]:
    """The source directory and, when none is given, the bundled artefact itself with its recipe."""
    if cfg.get("source"):
        return Path(to_absolute_path(str(cfg.source))), None
    if not (cfg.get("style_reader") or cfg.get("line_vae") or cfg.get("evaluation")) or not is_bundled(name):
        raise UserError("task=bundle needs source=<a saved line VAE (<run>/vae) or an exported model (<run>/model)>"
                        " (without it: style_reader=, line_vae= or evaluation= added to an artefact already bundled).")
    return bundled_dir(name), json.loads((bundled_dir(name) / RECIPE).read_text("utf-8"))


def run(cfg: DictConfig) -> dict[str, Any]:
    name = str(cfg.get("name") or "")
    target = bundled_dir(name)
    if cfg.get("into"):
        target = Path(to_absolute_path(str(cfg.into))) / name
    source, kept = _base(cfg, name)
    _check(name, source)  # a wrong or broken source stops here, before anything is copied
    reader, reader_entry = _reader(cfg, name)
    vae, vae_entry = _vae(cfg, name)
    dtype = str(cfg.get("dtype") or "float32") if kept is None else str(kept.get("dtype", "float32"))
    if dtype not in ("float32", "bf16"):
        raise UserError(f"dtype is float32 or bf16, not {dtype!r}.")
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    if kept is not None:  # the bundled artefact as it is: its own run, stages and evaluations stay
        recipe = {**kept, "bundled": now}
        recipe["evaluation"] = {**kept.get("evaluation", {}), **_evaluations(cfg.get("evaluation"))}
    else:
        recipe = {"name": name, "source": source.name, "bundled": now, "commit": _commit(), "dtype": dtype}
        if cfg.get("run_dir"):
            recipe.update(_run_recipe(Path(to_absolute_path(str(cfg.run_dir)))))
            recipe["stages"] = _stages(recipe, recipe["commit"])
        recipe["evaluation"] = _evaluations(cfg.get("evaluation"))
    if reader is not None:
        recipe["reader"] = reader_entry
    if vae is not None:
        recipe["vae"] = vae_entry
    recipe = _relative(recipe, str(Path(to_absolute_path(".")).resolve()))

    target.parent.mkdir(parents=True, exist_ok=True)
    staging, old = target.with_name(f".{name}.staging"), target.with_name(f".{name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(".*", RECIPE))
        if reader is not None:
            shutil.rmtree(staging / READER_SUBDIR, ignore_errors=True)
            shutil.copytree(reader, staging / READER_SUBDIR, ignore=shutil.ignore_patterns(".*", METRICS_FILE))
        if vae is not None:
            shutil.rmtree(staging / VAE_SUBDIR, ignore_errors=True)
            shutil.copytree(vae, staging / VAE_SUBDIR, ignore=shutil.ignore_patterns(".*", RECIPE))
        _drop_saved_paths(staging)
        if dtype == "bf16" and (staging / WEIGHTS).is_file():
            _to_bf16(staging / WEIGHTS)
        recipe["files"] = _files(staging)
        (staging / RECIPE).write_text(json.dumps(recipe, indent=1, ensure_ascii=False) + "\n", "utf-8")
        _check(name, staging)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.replace(old)
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    size = sum(f["bytes"] for f in recipe["files"].values())
    log.info("Bundled %s from %s into %s (%.1f MB, %s).", name, source, target, size / 1e6, dtype)
    return {"name": name, "target": str(target), "bytes": size}
