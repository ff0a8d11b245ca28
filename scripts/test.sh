#!/usr/bin/env bash
# Runs the whole test suite (creating/updating .venv first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python -m pytest -q "$@"
