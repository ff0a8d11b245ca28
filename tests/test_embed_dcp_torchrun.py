"""The embedded wrappers' state through torch.distributed.checkpoint under torchrun: saved on 2
ranks, loaded on 4 and on 1, the next outer step is bit-identical to the one the saving ranks took."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # torchrun jobs


def torchrun(nproc: int, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(nproc), str(ROOT / "tests" / "ranks" / "embed_dcp.py"), *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]


def test_sharded_state_saved_on_2_ranks_resumes_bit_identically_on_4_and_on_1(tmp_path):
    """One replica sharded over 2 ranks, then over 4 and 1; and 2 replicas of 1 shard each, then 2 replicas
    of 2 shards (each replica's residuals are its own: a checkpoint that kept one replica's copy would
    change the next outer step)."""
    torchrun(2, str(tmp_path), "one:save:1", "two:save:2")
    torchrun(4, str(tmp_path), "one:load:1", "two:load:2")
    torchrun(1, str(tmp_path), "one:load:1")
    read = lambda name: json.loads((tmp_path / f"{name}.json").read_text())  # noqa: E731
    saved = read("one-save-2")
    assert saved["counters"] == {"sparseloco": [0, 2], "diloco": [0, 2]}
    for kind in ("sparseloco", "diloco"):  # sharded over the mesh: the unsharded wrapper's arithmetic
        assert saved[f"{kind}_weights"] == saved[f"{kind}_unsharded_weights"], kind
    assert read("one-load-4") == saved
    assert read("one-load-1") == saved
    assert read("two-load-4") == read("two-save-2")
    assert read("two-save-2")["sparseloco_state"] != saved["sparseloco_state"]
