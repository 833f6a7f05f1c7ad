"""Entry point: compose the Hydra config (conf/run.yaml) and hand it to the selected task.

Beyond Hydra's own syntax it understands `resume=<run dir>`: the run's recorded overrides are replayed
with `hydra.run.dir=<run dir> ckpt_path=last`, so training continues in the same directory, reusing its
VAE and its last checkpoint (overrides given after `resume=` still apply). A configuration error is
reported in one line with exit status 2, like every other error a user can cause.
"""

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# Configs anchor outputs and data to the project root, wherever the command is started from.
os.environ.setdefault("IMURU_PL_ROOT", str(Path(__file__).resolve().parent))

log = logging.getLogger("imuru_pl.run")
USAGE_ERROR = 2
# Set for the non-zero ranks by Lightning's launcher (LOCAL_RANK, NODE_RANK), torchrun (RANK) and srun.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
_task_started = False


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig):
    global _task_started
    from imuru_pl.tasks import run_task

    _task_started = True
    return run_task(cfg)


def _fail(message: str) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    log.error("%s", message)
    sys.exit(USAGE_ERROR)


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _quoted(path: Path) -> str:
    return f'"{path}"' if "'" in str(path) else f"'{path}'"


def expand_resume(argv: list[str]) -> list[str]:
    """`resume=<dir>` -> the run's overrides + `hydra.run.dir=<dir> ckpt_path=last` + the other arguments."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        _fail("resume= continues one run; it cannot be combined with a sweep (-m).")
    run_dir = Path(resume[-1].split("=", 1)[1].strip("'\"")).expanduser().resolve()
    recorded = run_dir / ".hydra" / "overrides.yaml"
    if not recorded.is_file():
        _fail(f"Cannot resume {run_dir}: it is not a run directory (no .hydra/overrides.yaml).")
    from omegaconf import OmegaConf

    original = [str(o) for o in OmegaConf.load(recorded) or []]
    kept = [o for o in original if _key(o) not in ("ckpt_path", "hydra.run.dir", "resume")]
    rest = [a for a in argv if not a.startswith("resume=")]
    return [*kept, f"hydra.run.dir={_quoted(run_dir)}", "ckpt_path=last", *rest]


def secondary_rank() -> bool:
    """True in every process of a distributed run except global rank 0."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.strip().isdigit() and int(value) != 0:
            return True
    return False


def rank_overrides(argv: list[str]) -> list[str]:
    """Ranks other than 0 write nothing into the run directory: no .hydra copy, no log file, warnings only."""
    if not secondary_rank():
        return argv
    extra = ["hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
             "hydra.job_logging.root.level=WARNING"]
    return [*argv, *(e for e in extra if e not in argv)]


def one_line(err: BaseException) -> str:
    """Hydra's multi-line composition message (and its cause) as one sentence-like line."""
    parts: list[str] = []
    listing: list[str] | None = None
    for source in (err, err.__cause__):
        if source is None:
            continue
        for raw in str(source).splitlines():
            line = raw.strip()
            if not line or line.startswith(("full_key:", "object_type=", "Set the environment")):
                continue
            if line.startswith("Config search path"):
                break
            if raw.startswith(("\t", "  ")) and listing is not None:
                listing.append(line)
                continue
            if listing:
                parts[-1] += " " + ", ".join(listing) + "."
            listing = [] if line.endswith(":") else None
            parts.append(line if line.endswith((".", ":")) or listing is not None else line + ".")
    if listing:
        parts[-1] += " " + ", ".join(listing) + "."
    unique = list(dict.fromkeys(parts))
    override = getattr(err, "override", None)  # a parse error names the argument it could not read
    if override and override not in " ".join(unique):
        unique.insert(0, f"Cannot parse the argument {override}:")
    return " ".join(unique) or type(err).__name__


def cli() -> int:
    sys.argv[1:] = rank_overrides(expand_resume(sys.argv[1:]))
    if "HYDRA_FULL_ERROR" in os.environ:  # the user asked for Hydra's own full reports
        main()
        return 0
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line printout
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from imuru_pl.errors import UserError

    try:
        main()
    except UserError as err:  # a sweep job's error, re-raised by Hydra after the other jobs ran
        _fail(str(err))
    except (HydraException, OmegaConfBaseException) as err:
        if _task_started:
            raise  # raised by the code, not by composing the command line: keep the traceback
        _fail(one_line(err))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
