"""Entry point: compose the Hydra config (conf/run.yaml) and hand it to the selected task."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

# Configs anchor outputs and data to the project root, wherever the command is started from.
os.environ.setdefault("IMURU_PL_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="run")
def main(cfg: DictConfig) -> None:
    from imuru_pl.tasks import run_task

    run_task(cfg)


if __name__ == "__main__":
    main()
