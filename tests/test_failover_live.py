"""Leader failover with separate processes: two validators (stakes 600 and 400), two honest peers and
a sign-flipper. The leader is killed (SIGKILL) once a peer list governs; the peers switch to the
other validator's lists, stay on one fingerprint with it, keep learning, and no adversary's message
enters an aggregate. Every wait is on an event with a deadline."""

import json

import pytest

from gauntlet.config import DataConfig
from gauntlet.data import prepare
from gauntlet.identity import Identity
from live_nodes import Nodes, last_window, pending_chain, validator_records, windows

# 8-second windows: five processes share 2 cores and each validator must store its list in time
SETTINGS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
            "timing.blocks_per_window=80", "timing.upload_slot_s=1.0", "timing.slot_grace_s=0.3",
            "timing.gather_timeout_s=10", "train.eval_batches=2", "validator.list_min_ma=0.09"]
BLOCK_TIME = 0.1
PEERS = {"h0": "honest", "h1": "honest", "flip": "sign-flip"}
AFTER = 3  # windows the peers must finish after the leader's last list

pytestmark = pytest.mark.slow


def hotkey(name: str) -> str:
    return Identity.from_seed(name).hotkey


def record_of(store_root, window: int) -> dict:
    """A validator's signed window record (JSON) from its file store."""
    (path,) = [p for p in store_root.glob("runs/*/windows/*/record.json") if int(p.parent.name) == window]
    return json.loads(path.read_bytes())


def test_when_the_leader_is_killed_the_peers_follow_the_next_validator(tmp_path):
    data_dir = tmp_path / "data"
    prepare(DataConfig(seq_len=64), data_dir)
    url, chain = pending_chain(tmp_path / "chain.db", [hotkey(n) for n in PEERS], BLOCK_TIME)
    chain.register(hotkey("val-a"), stake=600.0, validator_permit=True)
    chain.register(hotkey("val-b"), stake=400.0, validator_permit=True)
    nodes = Nodes(tmp_path, data_dir, url, SETTINGS)
    try:
        nodes.launch("val-a", role="validator")
        nodes.launch("val-b", role="validator")
        for name, behaviour in PEERS.items():
            nodes.launch(name, extra=["--behaviour", behaviour])
        nodes.start_when_ready(chain, ["val-a", "val-b", *PEERS])

        def listed() -> bool:
            return any(m.get("list") == "list" for m in windows(nodes.run_dir("h0")).values())

        nodes.wait_for(lambda: listed() and len(validator_records(tmp_path / "store-val-a")) >= 3,
                       "a peer list naming peers, and three windows evaluated by the leader", timeout=300)
        nodes.kill("val-a")
        # the last list the leader stored (it may have stored the list of the window after its last record)
        last_list = max(int(p.parent.name) for p in (tmp_path / "store-val-a").glob("runs/*/windows/*/peers.json"))
        nodes.wait_for(lambda: min(last_window(nodes.run_dir(n)) for n in ("h0", "h1")) >= last_list + AFTER,
                       f"the honest peers to finish {AFTER} windows after the leader's last list", timeout=300)
        nodes.stop()
    finally:
        nodes.close()

    per_peer = {n: windows(nodes.run_dir(n)) for n in ("h0", "h1")}
    b_records = set(validator_records(tmp_path / "store-val-b"))
    after = range(last_list + 1, last_list + AFTER + 1)
    for w in after:
        lines = [per_peer[n][w] for n in per_peer]
        assert {m["list_validator"] for m in lines} == {hotkey("val-b")}, (w, lines)
        assert all(m["list_failover"] for m in lines)
        assert w in b_records and {m["fingerprint"] for m in lines} == {record_of(tmp_path / "store-val-b", w)
                                                                         ["fingerprint"]}
    assert any(per_peer["h0"][w]["list"] == "list" for w in after)  # b's own list, in time
    for w in set(per_peer["h0"]) & set(per_peer["h1"]):
        assert per_peer["h0"][w]["fingerprint"] == per_peer["h1"][w]["fingerprint"], w
    flip = hotkey("flip")
    listed_windows = [w for w, m in per_peer["h0"].items() if m.get("list") not in (None, "open")]
    assert listed_windows and all(flip not in per_peer[n][w]["gathered"] for n in per_peer for w in listed_windows)
    # training goes on under the next validator: the loss falls below where it was at the kill (one
    # window's single listed update can raise it a little, so not necessarily at every window)
    at_kill = per_peer["h0"][last_list]["val_loss"]
    since = [per_peer["h0"][w]["val_loss"] for w in after]
    assert min(since) < at_kill, f"validation loss did not fall after the failover: {at_kill} -> {since}"
