#!/usr/bin/env bash
# One command for the main job on a fresh machine: set up ./.venv, then `python run.py` (Hydra overrides pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec .venv/bin/python run.py "$@"
