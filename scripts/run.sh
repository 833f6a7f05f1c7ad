#!/usr/bin/env bash
# One command for the main job on a fresh machine: set up ./.venv, then `python run.py` (Hydra overrides pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# torch's own thread count (one per core) unless OMP_NUM_THREADS is set: on 2 idle cores the demo made 1100
# steps in 10.5 min with two threads against 950 in 11 with one (README). On a machine shared with other jobs
# set OMP_NUM_THREADS=1: threads competing for the cores made a VAE step 16 times slower (docs/troubleshooting.md).
exec .venv/bin/python run.py "$@"
