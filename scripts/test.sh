#!/usr/bin/env bash
# Runs the whole test suite (creating/updating .venv first). Extra arguments go to pytest.
# --quick (first argument) leaves out the tests marked slow (live networks, long lockstep runs,
# torchrun jobs): the loop for your own edits, a few minutes on 2 cores. CI runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
if [ "${1:-}" = "--quick" ]; then
  shift
  set -- -m "not slow" "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
