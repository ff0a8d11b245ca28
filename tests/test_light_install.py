"""`pip install gauntlet` is enough for SparseLoCo in your own trainer; the nodes name the extra they need."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NODE_PACKAGES = ("bittensor", "boto3", "botocore", "openskill", "transformers", "moto", "matplotlib")
# Runs first in the child: importing any node package (or anything below it) raises ImportError, as
# in an environment where only `pip install gauntlet` ran.
BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _NotInstalled())
for name in BLOCKED:  # the blocker itself works, or this test would prove nothing
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"{name} could still be imported")
"""
ONE_OUTER_STEP = BLOCKER + """
import json, tempfile
import torch
import torch.distributed as dist
from gauntlet.config import SparseLoCoConfig
from gauntlet.identity import Identity
from gauntlet.sparseloco import decode_message, fingerprint
from gauntlet.sparseloco.embed import SparseLoCo
from gauntlet.sparseloco.transport import TorchDistributedTransport

dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.Tanh(), torch.nn.Linear(128, 8))
before = fingerprint(dict(model.named_parameters()))
inner = torch.optim.AdamW(model.parameters(), lr=1e-2)
sent = []
class Recording(TorchDistributedTransport):
    def exchange(self, payload):
        sent.append(payload)
        return super().exchange(payload)
signer = Identity.from_seed("light")
outer = SparseLoCo(model, inner, Recording(), inner_steps=2, config=SparseLoCoConfig(), signer=signer)
for _ in range(2):
    model(torch.randn(16, 96)).square().mean().backward()
    inner.step()
    inner.zero_grad()
message = decode_message(sent[0], expected_hotkey=signer.hotkey)  # signature verified (sr25519)
dist.destroy_process_group()
print(json.dumps({"outer_steps": outer.outer_steps, "bytes": outer.last_report.bytes_sent,
                  "signed_by": message.header.hotkey, "changed": fingerprint(dict(model.named_parameters())) != before,
                  "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)}))
"""


def run_child(code: str, *args: str, blocked=NODE_PACKAGES) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, ",".join(blocked), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_embedding_api_runs_an_outer_step_without_any_node_package():
    child = run_child(ONE_OUTER_STEP)
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.splitlines()[-1])
    assert out["outer_steps"] == 1 and out["changed"] and out["loaded"] == []
    assert 0 < out["bytes"] < 20_000  # 12.3k parameters, top-k + 2-bit codes (fp32 would be 49 kB)
    assert out["signed_by"] == __import__("gauntlet.identity").identity.Identity.from_seed("light").hotkey


def test_the_core_install_asks_for_nothing_else():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {req.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for req in meta["dependencies"]}
    assert names == {"torch", "numpy", "pydantic", "safetensors", "bittensor-core"}
    extras = meta["optional-dependencies"]
    node = " ".join(extras["node"])
    for package in ("bittensor", "boto3", "openskill", "transformers", "rich", "matplotlib"):
        assert package in node, package
    assert any(r.startswith("moto[server]") for r in extras["sim"])
    assert {r.split(">")[0] for r in extras["data"]} == {"pyarrow", "datasets"}
    setup = (ROOT / "scripts" / "setup-venv.sh").read_text()
    assert '-e ".[node,sim,data,wandb,dev]"' in setup  # the README's commands install everything


def test_commands_that_need_an_extra_say_which_one(tmp_path):
    cli = BLOCKER + "from peers.cli import main\nraise SystemExit(main(sys.argv[2:]))\n"
    simulate = run_child(cli, "simulate", "--out", str(tmp_path / "a"), "--windows", "1", "--quiet")
    assert simulate.returncode == 1, simulate.stderr[-2000:]
    assert "pip install 'gauntlet[node]'" in simulate.stderr and "Traceback" not in simulate.stderr
    # with the node packages present but not moto's server, an embedded-S3 simulation asks for [sim]
    s3 = run_child(cli, "simulate", "--out", str(tmp_path / "b"), "--mode", "live", "--storage", "embedded-s3",
                   "--windows", "1", "--honest", "1", "--no-adversaries", "--quiet", "--data-dir", str(tmp_path / "d"),
                   blocked=("moto",))
    assert s3.returncode == 1, s3.stderr[-2000:]
    assert "pip install 'gauntlet[sim]'" in s3.stderr and "Traceback" not in s3.stderr
    # what the core install can do, it does: --help needs no extra
    helped = run_child(cli, "peer", "--help")
    assert helped.returncode == 0 and "--wallet.name" in helped.stdout
