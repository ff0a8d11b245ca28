"""Nodes on several ranks (torchrun, gloo, FSDP2): the validator scores exactly as one process does,
and a peer's state saved on N ranks resumes on any other number of ranks, bit for bit."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from gauntlet.chain.local import LocalChain
from gauntlet.config import load_config
from gauntlet.data import TokenDataset, prepare
from gauntlet.identity import Identity
from gauntlet.models import build_model
from gauntlet.sparseloco import ErrorFeedback, encode_message
from gauntlet.storage import BucketCard, FileStore, keys
from test_sharded_codec_torchrun import torchrun

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "ranks"))
from validator_ranks import SETTINGS  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    prepare(load_config(overrides=SETTINGS).data, path)
    return path


def network_with_three_uploads(root: Path, data: Path) -> None:
    """A manual-clock chain at the opening of window 1 and three peers' signed messages for window 0,
    stored inside the upload slot."""
    cfg = load_config(overrides=SETTINGS)
    chain = LocalChain(root / "chain.db", clock="manual", block_time=1.0)
    v = Identity.from_seed("validator")
    chain.register(v.hotkey, stake=1000.0, validator_permit=True)
    chain.commit(v, BucketCard("file", str(root / "validator")).encode())
    chain.advance(cfg.timing.blocks_per_window)
    opened = chain.timestamp(cfg.timing.blocks_per_window)
    vocab = TokenDataset(prepare(cfg.data, data), "train").vocab_size
    spec = {n: tuple(p.shape) for n, p in build_model(cfg.model, vocab, cfg.data.seq_len, seed=cfg.seed)
            .named_parameters()}
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        ident = Identity.from_seed(f"peer-{i}")
        store = FileStore(root / f"peer-{i}", clock=lambda: opened + 0.1)
        chain.register(ident.hotkey)
        chain.commit(ident, BucketCard("file", str(store.root)).encode())
        cts = ErrorFeedback(spec, cfg.sparseloco).compress(
            {n: 1e-2 * (i + 1) * torch.randn(s, generator=g) for n, s in spec.items()})
        store.put(keys.message(cfg.run_name, 0, ident.hotkey),
                  encode_message(cts, window=0, run=cfg.run_hash(), codec=cfg.sparseloco, signer=ident))


def test_a_validator_on_two_ranks_scores_and_aggregates_exactly_as_one_process(tmp_path, data_dir):
    network_with_three_uploads(tmp_path / "net", data_dir)
    results = {}
    for nproc in (0, 2):  # 0: one plain process, no torchrun
        net = tmp_path / f"net-{nproc}"
        shutil.copytree(tmp_path / "net", net)  # the validator writes into its own bucket and state
        out = tmp_path / f"out-{nproc}"
        args = (str(net), str(data_dir), str(out))
        if nproc:
            run = torchrun(nproc, "validator_ranks.py", *args)
        else:
            import subprocess

            run = subprocess.run([sys.executable, str(ROOT / "tests" / "ranks" / "validator_ranks.py"), *args],
                                 cwd=ROOT, capture_output=True, text=True, timeout=300,
                                 env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        assert run.returncode == 0, run.stderr[-3000:]
        results[nproc] = json.loads((out / "result.json").read_text())
    one, two = results[0], results[2]
    assert len(one["scores"]) == 3 and all("score" in s for s in one["scores"]), one["scores"]  # all loss-tested
    assert one["scores"] == two["scores"]  # losses before/after, scores, ratings: the same floats
    replay_one, replay_two = (json.loads(bytes.fromhex(r["replay"])) for r in (one, two))
    assert replay_one["messages"] == replay_two["messages"] and len(replay_one["messages"]) == 3
    assert replay_one["fingerprint"] == replay_two["fingerprint"] == one["fingerprint"] == two["fingerprint"]
    assert one["sample"] == two["sample"]


# ------------------------------------------------------------------------------------------- live

LIVE = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
        "timing.blocks_per_window=50", "timing.upload_slot_s=1.5", "timing.slot_grace_s=0.3",
        "timing.gather_timeout_s=10", "train.eval_batches=1", "model.device=cpu"]


def test_a_two_rank_peer_and_a_one_process_peer_stay_bit_identical_and_it_resumes_on_one_rank(tmp_path, data_dir):
    """5 windows trained by both on one fingerprint; then the sharded peer dies (SIGKILL of all its
    processes), comes back on a different number of ranks, resumes its exact state and rejoins."""
    from live_nodes import Nodes, last_window, metrics, pending_chain, windows

    names = ["sharded", "solo"]
    url, chain = pending_chain(tmp_path / "chain.db", [Identity.from_seed(n).hotkey for n in names], 0.1)
    nodes = Nodes(tmp_path, data_dir, url, LIVE)
    try:
        nodes.launch("sharded", extra=["--nproc", "2"])
        nodes.launch("solo")
        nodes.start_when_ready(chain, names)

        def trained_by_both() -> list[int]:
            per = {n: windows(nodes.run_dir(n)) for n in names}
            return sorted(w for w in set(per["sharded"]) & set(per["solo"])
                          if per["sharded"][w].get("trained") and per["solo"][w].get("trained"))

        nodes.wait_for(lambda: len(trained_by_both()) >= 5, "5 windows trained by both peers", timeout=240)
        nodes.kill("sharded")
        saved = json.loads((nodes.run_dir("sharded") / "state.json").read_text())  # the last complete state
        nodes.launch("sharded", extra=["--nproc", "1"])
        nodes.wait_for(lambda: any(m.get("event") == "resumed" for m in metrics(nodes.run_dir("sharded")))
                       and last_window(nodes.run_dir("sharded")) > saved["window"] + 1, "the sharded peer to resume")
        nodes.stop()  # SIGTERM to the supervisor: exit status 0, and a quiet stop (no torchrun traceback)
    finally:
        nodes.close()
    assert "Traceback" not in nodes.log("sharded") and "SignalException" not in nodes.log("sharded")
    resumed = [m for m in metrics(nodes.run_dir("sharded")) if m.get("event") == "resumed"]
    assert resumed[0]["window"] == saved["window"]  # the state saved on 2 ranks, loaded on 1
    per = {n: windows(nodes.run_dir(n)) for n in names}
    assert resumed[0]["fingerprint"] == per["solo"][saved["window"]]["fingerprint"]  # the weights, bit for bit
    before = [m for m in metrics(nodes.run_dir("sharded")) if m.get("window") == saved["window"] and "event" not in m]
    if before:  # its line was written before the kill: the residuals are the ones it had
        assert resumed[0]["ef_checksum"] == before[0]["ef_checksum"]
    common = sorted(set(per["sharded"]) & set(per["solo"]))
    assert len(common) >= 7
    for w in common:  # the same weights after every window, before and after the crash
        assert per["sharded"][w]["fingerprint"] == per["solo"][w]["fingerprint"], f"window {w}"
    for w in trained_by_both_windows(per)[:5]:
        assert sorted(per["solo"][w]["gathered"]) == sorted(Identity.from_seed(n).hotkey for n in names)


def trained_by_both_windows(per: dict) -> list[int]:
    return sorted(w for w in set(per["sharded"]) & set(per["solo"])
                  if per["sharded"][w].get("trained") and per["solo"][w].get("trained"))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [e.split(b"=", 1)[1] for e in env if e.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def test_when_a_rank_dies_the_whole_node_stops_with_an_error(tmp_path, data_dir):
    import subprocess
    import time

    from live_nodes import Nodes, last_window, pending_chain

    url, chain = pending_chain(tmp_path / "chain.db", [Identity.from_seed("p").hotkey], 0.1)
    nodes = Nodes(tmp_path, data_dir, url, LIVE)
    try:
        nodes.launch("p", extra=["--nproc", "2"])
        nodes.start_when_ready(chain, ["p"])
        nodes.wait_for(lambda: last_window(nodes.run_dir("p")) >= 1, "the sharded peer to finish window 1")
        proc = nodes.procs.pop("p")  # it is expected to fail from here on
        workers = [pid for launcher in _children(proc.pid) for pid in _children(launcher)]
        victim = next(pid for pid in workers if _rank_of(pid) == 1)
        killed_at = time.monotonic()
        os.kill(victim, 9)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the node kept running (or hung) after one of its ranks died")
        print(f"the node stopped {time.monotonic() - killed_at:.1f} s after rank 1 died")
        assert code != 0
        log = nodes.log("p")
        assert "local_rank: 1" in log and "SIGKILL" in log  # torchrun names the rank that died
        assert all(not Path(f"/proc/{pid}").exists() or _rank_of(pid) is None for pid in workers)  # none left
    finally:
        nodes.close()


def test_a_state_saved_under_torchrun_is_not_resumed_by_one_plain_process(tmp_path):
    from peers.node.engine import ModelEngine
    from peers.node.state_files import StateError

    cfg = load_config(overrides=SETTINGS)
    engine = ModelEngine(cfg, build_model(cfg.model, 256, cfg.data.seq_len, seed=cfg.seed), train=True)
    (tmp_path / "state.json").write_text(json.dumps({"dir": "state-3"}))  # what a sharded peer leaves
    with pytest.raises(StateError, match=r"--nproc N \(any N"):
        engine.state.load(str(tmp_path), "state")
    engine.state.save(str(tmp_path), "state", 3, {"run": "r"})  # a one-process state beside it wins
    assert engine.state.load(str(tmp_path), "state") is not None
