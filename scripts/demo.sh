#!/usr/bin/env bash
# The main job of this version: two processes train a tiny Llama with SparseLoCo through
# torch.distributed (gloo on CPU), printing the validation loss after every outer step.
# Extra arguments go to examples/embed_torch_distributed.py (see --help there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec .venv/bin/python -m torch.distributed.run --standalone \
  --nproc_per_node "${NPROC:-2}" examples/embed_torch_distributed.py "$@"
