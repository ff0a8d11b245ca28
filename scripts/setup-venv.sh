#!/usr/bin/env bash
# Creates or updates ./.venv: PyTorch (CPU build, pinned, installed first so that no CUDA wheels are
# pulled), then this package in editable mode with every extra (node, sim, data, wandb) and the dev tools. Re-running is quick: it only
# reinstalls when pyproject.toml or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=""
for candidate in "${PYTHON:-}" python3.11 python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PY=$candidate; break
  fi
done
[ -n "$PY" ] || { echo "error: Python >= 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.gauntlet-setup
want=$(cat pyproject.toml scripts/setup-venv.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up .venv (torch ${TORCH_VERSION:=2.13.0}, gauntlet and its dependencies)..."
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==${TORCH_VERSION}"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[node,sim,data,wandb,dev]"
  echo "$want" > "$stamp"
fi
