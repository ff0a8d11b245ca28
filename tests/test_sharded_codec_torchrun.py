"""The sharded codec on real ranks: torchrun, gloo, parameters sharded by fully_shard. Messages are
byte-identical to one process's for the same whole Δ at 1, 2 and 4 ranks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gauntlet.config import SparseLoCoConfig
from gauntlet.sparseloco import ErrorFeedback, encode_message
from gauntlet.sparseloco.sharding import shard_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "ranks"))
from codec_ranks import SHAPES, WINDOWS, deltas, model  # noqa: E402

pytestmark = pytest.mark.slow


def torchrun(nproc: int, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), str(ROOT / "tests" / "ranks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def expected_messages() -> tuple[list[bytes], ErrorFeedback]:
    cfg = SparseLoCoConfig()
    whole = {n.replace("_", ".", 1): p.detach().clone() for n, p in model().named_parameters()}
    ef = ErrorFeedback({n: t.shape for n, t in whole.items()}, cfg)
    out = []
    for w in range(WINDOWS):  # the same arithmetic as the ranks, on whole tensors
        delta = {n: t - (t - deltas(w)[n]) for n, t in whole.items()}
        out.append(encode_message(ef.compress(delta), window=w, run="r", codec=cfg, hotkey="h"))
    return out, ef


@pytest.mark.parametrize("nproc", [1, 2, 4])
def test_ranks_of_fully_shard_write_the_message_of_one_process(tmp_path, nproc):
    run = torchrun(nproc, "codec_ranks.py", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    messages, ef = expected_messages()
    for w, expected in enumerate(messages):
        assert (tmp_path / f"{w}.msg").read_bytes() == expected, f"window {w} differs at {nproc} ranks"
    for rank in range(nproc):  # each rank's residual rows are the whole residual's rows
        held = load_file(tmp_path / f"ef-{rank}.safetensors")
        for name, shape in SHAPES.items():
            rows = shard_rows(shape[0], nproc, rank)
            assert torch.equal(held[name], ef.residual(name)[slice(*rows)]), (rank, name)


def test_a_wrongly_sharded_model_is_a_config_error_naming_the_parameter():
    import json

    run = torchrun(2, "placement_errors.py")
    assert run.returncode == 0, run.stderr[-3000:]
    errors = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("{")))
    assert "('replicate', 'shard')" in errors["mesh names"]
    assert "'0.weight' is not sharded" in errors["not sharded"]
    assert "'0.weight' is placed (Shard(dim=1),)" in errors["dim 1"]
    assert "'0.weight' is sharded over the ranks [0, 1], not over [0]" in errors["other mesh"]
    assert "either a transport" in errors["transport and mesh"]
    assert "mesh_dims=('dp', 'shard') but the mesh's dimensions are ('dp', 'tp')" in errors["diloco mesh dims"]
    assert "'0.weight' is not sharded" in errors["diloco not sharded"]
