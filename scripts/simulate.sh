#!/usr/bin/env bash
# The main job: a whole Gauntlet network on this machine (creating/updating .venv first), then a
# report. Extra arguments go to `gauntlet simulate` (see --help); the run directory is runs/simulate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
if [ "$#" -eq 0 ]; then set -- --out "runs/simulate-$(date +%Y%m%d-%H%M%S)"; fi
exec .venv/bin/gauntlet simulate "$@"
