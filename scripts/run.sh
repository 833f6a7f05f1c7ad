#!/usr/bin/env bash
# One command for the main job on a fresh machine: set up ./.venv, then `python run.py` (Hydra overrides pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# One thread unless told otherwise: on a 2-core machine with any other load, two threads made a VAE step
# 16 times slower (docs/troubleshooting.md); set OMP_NUM_THREADS to use more.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-${OMP_NUM_THREADS:-1}}
exec .venv/bin/python run.py "$@"
