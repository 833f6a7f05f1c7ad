#!/usr/bin/env bash
# One command for the main job on a fresh machine: set up ./.venv, then `python run.py` (Hydra overrides pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# Every core unless told otherwise: on 2 idle cores the demo makes 48 % more steps with two threads than
# with one (README). On a machine shared with other jobs set OMP_NUM_THREADS=1: threads competing for the
# cores made a VAE step 16 times slower (docs/troubleshooting.md).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$OMP_NUM_THREADS}
exec .venv/bin/python run.py "$@"
