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
from peers.sim.lockstep import build, run

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
            "timing.blocks_per_window=10", "timing.upload_slot_s=20", "model.device=cpu", "train.eval_batches=1",
            "validator.checkpoint_every=2", "validator.weights_every=1"]
WINDOWS = 5
KILLS = 3  # after windows 0..2 have been recorded, at random points of the window that follows
# The child: open (or reopen) the lockstep network and run it to WINDOWS windows, whatever it finds on disk.
CHILD = """
import sys
import time
from gauntlet.config import load_config
from peers.behaviours import Behaviour, Noise
from peers.sim.lockstep import build, run_window
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
    expected_fp = fingerprint(dict(straight.validator.model.named_parameters()))

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
    assert fingerprint(dict(resumed.validator.model.named_parameters())) == expected_fp
    for name in ("honest-0", "honest-1", "honest-2"):
        assert last_fingerprint(tmp_path / "crashed" / "peers" / name / "state") == (WINDOWS - 1, expected_fp)
        assert fingerprint(dict(resumed.peers[name].model.named_parameters())) == expected_fp


# ------------------------------------------------------------------------------------------- live

LIVE = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
        "timing.blocks_per_window=30", "timing.upload_slot_s=1.0", "timing.slot_grace_s=0.3",
        "timing.gather_timeout_s=10", "train.eval_batches=1", "validator.checkpoint_every=3"]
BLOCK_TIME = 0.1  # 30 blocks: 3-second windows
AFTER_KILLS = 3  # windows every node must finish after the last restart


def test_live_peer_and_validator_killed_repeatedly_resume_and_stay_in_sync(tmp_path):
    from gauntlet.identity import Identity
    from gauntlet.storage import FileStore, keys
    from live_nodes import Nodes, last_window, metrics, pending_chain, validator_records, windows
    from peers.network.records import verify_chain
    from peers.node.state_files import read_state_file

    data_dir = tmp_path / "data"
    prepare(load_config(overrides=LIVE).data, data_dir)
    url, chain = pending_chain(tmp_path / "chain.db", [Identity.from_seed(n).hotkey for n in ("a", "b")],
                               BLOCK_TIME, validators=[Identity.from_seed("v").hotkey])
    roles = {"a": "peer", "b": "peer", "v": "validator"}
    nodes = Nodes(tmp_path, data_dir, url, LIVE)
    try:
        for name, role in roles.items():
            nodes.launch(name, role)
        nodes.start_when_ready(chain, roles)
        rng = random.Random(99)
        killed = {"b": 0, "v": 0}

        def progress(name: str) -> int:  # windows the node has finished so far
            if name == "v":
                return len(validator_records(tmp_path / "store-v"))
            return len(windows(tmp_path / f"run-{name}"))

        for victim in ("b", "v", "b", "v", "b"):
            start = progress(victim)
            nodes.wait_for(lambda v=victim, s=start: progress(v) > s, f"{victim} to finish a window since its start")
            kill_at = chain.block() + rng.randrange(30)  # then a random point of the next 3-second window
            nodes.wait_for(lambda at=kill_at: chain.block() >= at, "the chain to reach the kill point")
            nodes.kill(victim)
            killed[victim] += 1
            nodes.launch(victim, roles[victim])
        restarted = chain.block() // 30
        nodes.wait_for(lambda: min(last_window(tmp_path / "run-a"), last_window(tmp_path / "run-b"),
                                   max(validator_records(tmp_path / "store-v"), default=-1)) >= restarted + AFTER_KILLS,
                       f"every node to finish {AFTER_KILLS} windows after the last restart", timeout=240)
        nodes.stop()
    finally:
        nodes.close()
    assert killed == {"b": 3, "v": 2}, killed

    # no state file is corrupt, and the peer says it resumed from it each time
    for name in ("a", "b"):
        assert read_state_file(tmp_path / f"run-{name}" / "state.safetensors") is not None
    assert read_state_file(tmp_path / "run-v" / "validator.safetensors") is not None
    lines = metrics(tmp_path / "run-b")
    assert sum(1 for x in lines if x.get("event") == "resumed") == killed["b"]
    # everyone ends on the same weights as the validator, window after window
    per = {n: {w: m["fingerprint"] for w, m in windows(tmp_path / f"run-{n}").items()} for n in ("a", "b")}
    last = min(max(per["a"]), max(per["b"]))
    for w in range(last + 1):
        assert len({per[n][w] for n in per if w in per[n]}) == 1, f"window {w}: peers disagree"
    vstore = FileStore(tmp_path / "store-v")
    found = validator_records(tmp_path / "store-v")
    assert found == list(range(found[0], found[-1] + 1)), f"the validator skipped windows: {found}"  # none lost
    assert found[-1] >= last - 1
    records = [vstore.get(keys.record(load_config(overrides=LIVE).run_name, w)) for w in found]
    by_window = dict(zip(found, records))
    common = min(last, found[-1])
    assert json.loads(by_window[common])["fingerprint"] == per["a"][common] == per["b"][common]
    assert verify_chain(records, {Identity.from_seed("v").hotkey})
