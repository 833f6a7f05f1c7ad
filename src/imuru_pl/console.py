"""What a person sees in the terminal: the run's config as a tree at the start, progress bars on long
loops, and where the outputs went at the end.

Everything here prints on rank zero only, so a multi-GPU run shows one tree and one set of bars.
`task(cfg)` wraps a task; it also keeps the config so that callbacks built from YAML (which only see
their own node) can read the whole run's config through `current_config()`.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree
from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger(__name__)

# Top-level keys shown first, in this order; the others follow in the config's own order.
ORDER = ("task_name", "seed", "data", "vae", "model", "optim", "trainer", "callbacks", "logger", "metrics", "paths")
# Wide enough that a resolved path or the character set stays on one line when output is not a terminal.
MIN_WIDTH = 120

# Where launchers put the process's rank (the same keys Lightning reads).
RANK_KEYS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

_run_config: DictConfig | None = None


def is_rank_zero() -> bool:
    """Lightning's view of this process's rank once Lightning is loaded (spawned workers learn theirs
    late), else the launcher's environment. Lightning is not imported here: metrics stay light."""
    module = sys.modules.get("lightning_utilities.core.rank_zero")
    rank = getattr(getattr(module, "rank_zero_only", None), "rank", None)
    if rank is None:
        rank = next((int(os.environ[key]) for key in RANK_KEYS if os.environ.get(key)), 0)
    return rank == 0


def current_config() -> DictConfig | None:
    """The config of the task that is running (set by `task`), or None outside one."""
    return _run_config


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, every interpolation resolved that can be.

    Outside a Hydra run (the compose API, a notebook) `${hydra:...}` cannot resolve; such a value is
    shown as it is written, and the rest of the config still resolved.
    """
    return _resolve(cfg)  # type: ignore[return-value]


def _resolve(node: Any) -> Any:
    try:
        return OmegaConf.to_container(node, resolve=True)
    except Exception as err:  # noqa: BLE001 - an unresolvable interpolation must not stop the run
        log.debug("Showing part of the config unresolved: %s", err)
    if isinstance(node, DictConfig):
        return {key: _resolve_child(node, key) for key in node}
    if isinstance(node, ListConfig):
        return [_resolve_child(node, i) for i in range(len(node))]
    return node


def _resolve_child(node: DictConfig | ListConfig, key: Any) -> Any:
    try:
        child = node._get_node(key)  # the node itself: reading it would resolve it
    except Exception:  # noqa: BLE001
        return None
    if isinstance(child, (DictConfig, ListConfig)):
        return _resolve(child)
    try:
        return node[key]
    except Exception:  # noqa: BLE001
        return child._value()


class _Dumper(yaml.SafeDumper):
    """Lists of plain values on one line ([0.0, 1.0]), everything else in block style."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(item, (dict, list)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def to_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)


def config_yaml(cfg: DictConfig | dict) -> str:
    """The resolved config as YAML, in the key order of `ORDER`."""
    data = resolved(cfg) if isinstance(cfg, DictConfig) else cfg
    return to_yaml(_ordered(data))


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    first = [k for k in ORDER if k in data]
    return {k: data[k] for k in first + [k for k in data if k not in first]}


def config_tree(cfg: DictConfig | dict) -> Tree:
    """A rich Tree: one branch per top-level group with its YAML; plain values gathered in one branch."""
    data = _ordered(resolved(cfg) if isinstance(cfg, DictConfig) else cfg)
    tree = Tree("[bold]config[/bold]", guide_style="dim")
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if scalars:
        tree.add("[bold]run[/bold]").add(_yaml_block(scalars))
    for key, value in data.items():
        if isinstance(value, dict):
            branch = tree.add(f"[bold]{key}[/bold]")
            if value:
                branch.add(_yaml_block(value))
    return tree


def _yaml_block(data: dict[str, Any]) -> Syntax:
    text = to_yaml(data).rstrip()
    return Syntax(text, "yaml", theme="ansi_dark", background_color="default", word_wrap=True)


def _console() -> Console:
    console = Console(file=sys.stdout)
    if not console.is_terminal and console.width < MIN_WIDTH:
        console = Console(file=sys.stdout, width=MIN_WIDTH)
    return console


def print_config(cfg: DictConfig) -> None:
    """Print the resolved config as a tree (rank zero only)."""
    if is_rank_zero():
        _console().print(config_tree(cfg))


def output_dir(cfg: DictConfig) -> str | None:
    """`paths.output_dir` if it resolves (it does inside a Hydra run), else None."""
    try:
        value = OmegaConf.select(cfg, "paths.output_dir", throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001
        return None
    return str(value) if value else None


def print_outputs(cfg: DictConfig, failed: bool = False) -> None:
    """Say where the task's outputs (and its log) are (rank zero only)."""
    path = output_dir(cfg)
    if path is None or not is_rank_zero():
        return
    name = cfg.get("task_name", "task")
    if failed:
        _console().print(f"[bold red]{name} stopped[/bold red]; its log and any partial outputs: {path}",
                         soft_wrap=True)
    else:
        _console().print(f"[bold green]{name} done[/bold green]. Output directory: [bold]{path}[/bold]",
                         soft_wrap=True)


@contextmanager
def task(cfg: DictConfig) -> Iterator[None]:
    """Around a task: print the config tree first and the output directory last (also when it fails).

    `print_config=false` on the command line skips the tree. Hydra's `--cfg` and `--help` never reach
    a task, so they print only what Hydra prints.
    """
    global _run_config
    previous, _run_config = _run_config, cfg
    if cfg.get("print_config", True):
        print_config(cfg)
    try:
        yield
    except BaseException:
        print_outputs(cfg, failed=True)
        raise
    else:
        print_outputs(cfg)
    finally:
        _run_config = previous


def progress(iterable: Iterable[T], total: int | None = None, desc: str | None = None, unit: str = "it",
             **kwargs: Any) -> Iterable[T]:
    """A tqdm bar with count, rate and time left over `iterable`, on rank zero only.

    For loops of seconds or more outside Lightning (rendering, generating, evaluating many lines); the
    bar disappears when done, so the log line that reports the result stays next to the others.
    """
    kwargs.setdefault("leave", False)
    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not is_rank_zero(), **kwargs)
