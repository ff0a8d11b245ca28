"""Peers as separate OS processes on one embedded chain: sync, loss, restarts, late joiners."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gauntlet.chain.local import LocalChain
from gauntlet.config import DataConfig
from gauntlet.data import prepare
from gauntlet.identity import Identity
from gauntlet.storage.s3_store import S3Store

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
            "timing.blocks_per_window=30", "timing.upload_slot_s=1.0", "timing.slot_grace_s=0.3",
            "timing.gather_timeout_s=10", "train.eval_batches=2"]
BLOCK_TIME = 0.1  # 30 blocks: 3-second windows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    prepare(DataConfig(seq_len=64), path)  # once, before the peers start
    return path


def make_chain(tmp_path, names):
    url = f"local://{tmp_path}/chain.db?block_time={BLOCK_TIME}"
    chain = LocalChain(tmp_path / "chain.db", block_time=BLOCK_TIME)
    for name in names:
        chain.register(Identity.from_seed(name).hotkey)
    return url, chain


def launch(tmp_path, data_dir, chain_url, name, storage, until, extra=()):
    cmd = [sys.executable, "-m", "peers.cli", "peer", "--identity-seed", name, "--chain", chain_url,
           "--storage", storage, "--allow-local-cards", "--run-dir", str(tmp_path / f"run-{name}"),
           "--data-dir", str(data_dir), "--until-window", str(until), *extra]
    for s in SETTINGS:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / f"log-{name}.txt", "ab")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(procs, tmp_path, timeout=180):
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
        log = (tmp_path / f"log-{name}.txt").read_text()[-3000:]
        assert proc.returncode == 0, f"peer {name} failed:\n{log}"


def metrics(tmp_path, name):
    return [json.loads(line) for line in (tmp_path / f"run-{name}" / "metrics.jsonl").read_text().splitlines()]


def windows(tmp_path, name):
    return {m["window"]: m for m in metrics(tmp_path, name) if "event" not in m}


def assert_in_sync_and_learning(tmp_path, names, last):
    per_peer = {n: windows(tmp_path, n) for n in names}
    trained = [w for w in range(last + 1) if all(per_peer[n].get(w, {}).get("trained") for n in names)]
    assert len(trained) >= 3, f"too few windows trained by everyone: {trained}"
    for w in range(last + 1):
        prints = {per_peer[n][w]["fingerprint"] for n in names if w in per_peer[n]}
        assert len(prints) == 1, f"window {w}: peers disagree on the weights"
    for w in trained:
        assert sorted(per_peer[names[0]][w]["gathered"]) == sorted(Identity.from_seed(n).hotkey for n in names)
    first, final = per_peer[names[0]][trained[0]]["val_loss"], per_peer[names[0]][last]["val_loss"]
    assert final < first - 0.3, f"validation loss did not go down: {first} -> {final}"


def test_peers_on_a_file_store_stay_bit_identical_and_learn(tmp_path, data_dir):
    names = ["a", "b", "c"]
    url, _ = make_chain(tmp_path, names)
    procs = {n: launch(tmp_path, data_dir, url, n, f"file://{tmp_path}/store-{n}", until=6) for n in names}
    finish(procs, tmp_path)
    assert_in_sync_and_learning(tmp_path, names, last=6)


def test_peers_on_s3_buckets_stay_bit_identical_and_learn(tmp_path, data_dir, moto_port):
    names = ["a", "b"]
    url, _ = make_chain(tmp_path, names)
    procs = {}
    for n in names:
        bucket = f"peer-{n}-{tmp_path.name[-8:].lower().replace('_', '-')}"
        S3Store(bucket, endpoint_url=f"http://127.0.0.1:{moto_port}", region="us-east-1").create_bucket()
        storage = f"s3://{bucket}?endpoint_url=http://127.0.0.1:{moto_port}&region=us-east-1"
        procs[n] = launch(tmp_path, data_dir, url, n, storage, until=5,
                          extra=["--storage.read-access-key", "reader", "--storage.read-secret-key", "reader-secret"])
    finish(procs, tmp_path)
    assert_in_sync_and_learning(tmp_path, names, last=5)


def test_a_killed_peer_resumes_with_its_state_and_a_late_peer_catches_up(tmp_path, data_dir):
    names = ["a", "b", "c"]
    url, chain = make_chain(tmp_path, names)
    last = 8
    procs = {n: launch(tmp_path, data_dir, url, n, f"file://{tmp_path}/store-{n}", until=last) for n in ("a", "b")}

    def done(name):
        path = tmp_path / f"run-{name}" / "metrics.jsonl"
        return max(windows(tmp_path, name), default=-1) if path.exists() else -1

    deadline = time.monotonic() + 120
    while done("b") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert done("b") >= 3
    time.sleep(0.8)  # into the next window's training
    procs["b"].send_signal(signal.SIGKILL)
    procs["b"].wait(timeout=30)
    saved = metrics(tmp_path, "b")[-1]
    time.sleep(2.5)  # stay down for about a window
    procs["b"] = launch(tmp_path, data_dir, url, "b", f"file://{tmp_path}/store-b", until=last)
    procs["c"] = launch(tmp_path, data_dir, url, "c", f"file://{tmp_path}/store-c", until=last)
    finish(procs, tmp_path)

    resumed = [m for m in metrics(tmp_path, "b") if m.get("event") == "resumed"]
    assert resumed and resumed[0]["window"] == saved["window"]
    assert resumed[0]["ef_checksum"] == saved["ef_checksum"]  # error feedback survived the crash
    assert resumed[0]["fingerprint"] == saved["fingerprint"]
    late = windows(tmp_path, "c")
    assert not late[0]["trained"] and any(m["trained"] for m in late.values())  # caught up, then trained
    final = {windows(tmp_path, n)[last]["fingerprint"] for n in names}
    assert len(final) == 1
    for w in range(last + 1):
        assert len({windows(tmp_path, n)[w]["fingerprint"] for n in names if w in windows(tmp_path, n)}) == 1
