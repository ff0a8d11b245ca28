"""Crash safety: nodes killed with SIGKILL at random points resume from disk and lose nothing."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gauntlet.config import load_config
from gauntlet.data import prepare
from gauntlet.sparseloco import fingerprint
from peers.behaviours import Behaviour, Noise
from peers.lockstep import build, run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
            "timing.blocks_per_window=10", "timing.upload_slot_s=20", "model.device=cpu", "train.eval_batches=1",
            "validator.checkpoint_every=2", "validator.weights_every=1"]
WINDOWS = 7
KILLS = 5  # after windows 0..4 have been recorded, at random points of the window that follows
# The child: open (or reopen) the lockstep network and run it to WINDOWS windows, whatever it finds on disk.
CHILD = """
import sys
import time
from gauntlet.config import load_config
from peers.behaviours import Behaviour, Noise
from peers.lockstep import build, run_window
cfg = load_config(overrides=sys.argv[3:])  # argv[0] is '-c'
peers = {"honest-0": Behaviour(), "honest-1": Behaviour(), "honest-2": Behaviour(), "noise": Noise()}
net = build(sys.argv[1], cfg, peers, sys.argv[2])
while net.window < %d:
    run_window(net)
""" % WINDOWS


def network():
    return {"honest-0": Behaviour(), "honest-1": Behaviour(), "honest-2": Behaviour(), "noise": Noise()}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    prepare(load_config(overrides=SETTINGS).data, path)
    return path


def last_fingerprint(run_dir: Path) -> tuple[int, str]:
    line = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return line["window"], line["fingerprint"]


def test_a_lockstep_network_killed_at_random_points_ends_exactly_as_an_uninterrupted_one(tmp_path, data_dir):
    cfg = load_config(overrides=SETTINGS)
    straight = build(tmp_path / "straight", cfg, network(), data_dir)
    run(straight, WINDOWS)
    expected_weights = straight.chain.weights()
    expected_book = straight.validator.book.records
    expected_fp = fingerprint(straight.validator.params)

    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", CHILD, str(tmp_path / "crashed"), str(data_dir), *SETTINGS]

    def progress() -> int:  # windows the validator has recorded so far
        return len(list((tmp_path / "crashed").glob("validator/bucket/runs/*/windows/*/record.json")))

    kills = 0
    for _attempt in range(20):  # bounded: every attempt either finishes or is killed
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < KILLS:
            start, deadline = progress(), time.monotonic() + 120
            while progress() <= start and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)  # until a window has been finished since this start
            time.sleep(rng.uniform(0.0, 1.5))  # then a random point of the next window
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait()
                kills += 1
                continue
        child.wait(timeout=300)
        err = child.stderr.read().decode(errors="replace")
        assert child.returncode == 0, err[-3000:]
        break
    else:
        pytest.fail("the network never finished")
    assert kills == KILLS, "the network finished before it could be killed often enough; the test proves nothing"

    resumed = build(tmp_path / "crashed", cfg, network(), data_dir)  # every state file still loads
    assert resumed.window == WINDOWS
    assert resumed.chain.weights() == expected_weights
    assert resumed.validator.book.records == expected_book
    assert fingerprint(resumed.validator.params) == expected_fp
    for name in ("honest-0", "honest-1", "honest-2"):
        assert last_fingerprint(tmp_path / "crashed" / "peers" / name / "state") == (WINDOWS - 1, expected_fp)
        assert fingerprint(resumed.peers[name].params) == expected_fp


# ------------------------------------------------------------------------------------------- live

LIVE = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
        "timing.blocks_per_window=30", "timing.upload_slot_s=1.0", "timing.slot_grace_s=0.3",
        "timing.gather_timeout_s=10", "train.eval_batches=1", "validator.checkpoint_every=3"]
BLOCK_TIME = 0.1  # 30 blocks: 3-second windows


def launch(tmp_path, data_dir, chain_url, role, name, until):
    cmd = [sys.executable, "-m", "peers.cli", "validate" if role == "validator" else "peer", "--identity-seed", name,
           "--chain", chain_url, "--storage", f"file://{tmp_path}/store-{name}", "--allow-local-cards",
           "--run-dir", str(tmp_path / f"run-{name}"), "--data-dir", str(data_dir), "--until-window", str(until)]
    for s in LIVE:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / f"log-{name}.txt", "ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_live_peer_and_validator_killed_repeatedly_resume_and_stay_in_sync(tmp_path):
    from gauntlet.chain.local import LocalChain
    from gauntlet.identity import Identity
    from peers.records import verify_chain
    from peers.state import read_state_file

    data_dir = tmp_path / "data"
    prepare(load_config(overrides=LIVE).data, data_dir)
    chain = LocalChain(tmp_path / "chain.db", block_time=BLOCK_TIME)
    for name in ("a", "b"):
        chain.register(Identity.from_seed(name).hotkey)
    chain.register(Identity.from_seed("v").hotkey, stake=1000.0, validator_permit=True)
    url, last = f"local://{tmp_path}/chain.db?block_time={BLOCK_TIME}", 14
    roles = {"a": "peer", "b": "peer", "v": "validator"}
    procs = {n: launch(tmp_path, data_dir, url, r, n, last) for n, r in roles.items()}
    rng = random.Random(99)
    killed = {"b": 0, "v": 0}

    def progress(name: str) -> int:  # windows the node has finished so far
        if name == "v":
            return len(list(tmp_path.glob("store-v/runs/*/windows/*/record.json")))
        path = tmp_path / f"run-{name}" / "metrics.jsonl"
        return sum(1 for x in path.read_text().splitlines() if '"event"' not in x) if path.exists() else 0

    for victim in ("b", "v", "b", "v", "b"):
        start, deadline = progress(victim), time.monotonic() + 60
        while progress(victim) <= start and procs[victim].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until it has finished a window since it (re)started
        time.sleep(rng.uniform(0.0, 3.0))  # then a random point of the next 3-second window
        if procs[victim].poll() is not None:
            break
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait(timeout=30)
        killed[victim] += 1
        procs[victim] = launch(tmp_path, data_dir, url, roles[victim], victim, last)
    deadline = time.monotonic() + 240
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
        assert proc.returncode == 0, (tmp_path / f"log-{name}.txt").read_text()[-3000:]
    assert killed == {"b": 3, "v": 2}, killed

    # no state file is corrupt, and the peer says it resumed from it each time
    for name in ("a", "b"):
        assert read_state_file(tmp_path / f"run-{name}" / "state.safetensors") is not None
    assert read_state_file(tmp_path / "run-v" / "validator.safetensors") is not None
    lines = [json.loads(x) for x in (tmp_path / "run-b" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x.get("event") == "resumed") == killed["b"]
    # everyone ends on the same weights as the validator, window after window
    per = {n: {x["window"]: x["fingerprint"] for x in map(json.loads, (tmp_path / f"run-{n}" / "metrics.jsonl")
                                                          .read_text().splitlines()) if "event" not in x}
           for n in ("a", "b")}
    for w in range(last + 1):
        assert len({per[n][w] for n in per if w in per[n]}) == 1, f"window {w}: peers disagree"
    from gauntlet.storage import FileStore, keys

    vstore = FileStore(tmp_path / "store-v")
    found = sorted(p.window for p in map(keys.parse, (o.key for o in vstore.list("runs/"))) if p and p.kind == "record")
    assert found == list(range(found[0], last + 1)), f"the validator skipped windows: {found}"  # none lost to a kill
    records = [vstore.get(keys.record(load_config(overrides=LIVE).run_name, w)) for w in found]
    assert json.loads(records[-1])["fingerprint"] == per["a"][last] == per["b"][last]
    assert verify_chain(records, {Identity.from_seed("v").hotkey})
