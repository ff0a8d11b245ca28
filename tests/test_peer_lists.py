"""The validator's peer list: signed, selected with reserves, and the rule that decides which list
governs a window when the window's own list is late (docs/protocol.md §3)."""

import json
import os

import pytest
import torch

from gauntlet.chain.local import LocalChain
from gauntlet.config import load_config
from gauntlet.data import prepare
from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.identity import Identity
from gauntlet.sparseloco import ErrorFeedback, encode_message
from gauntlet.storage import BucketCard, FileStore, keys
from peers.network.peer_list import LOOKBACK, PeerList, choose_list, decode_peer_list, encode_peer_list, select
from peers.peer import Peer, PeerOptions

VALIDATOR, PEER, STRANGER = (Identity.from_seed(s) for s in ("validator", "peer", "stranger"))


def test_peer_lists_are_signed_and_select_top_g_with_reserves():
    data = encode_peer_list(7, ["p1", "p2", "p3"], ["r1", "r2"], run="r", signer=VALIDATOR)
    listed = decode_peer_list(data, run="r", window=7, trusted={VALIDATOR.hotkey})
    assert listed.peers == ("p1", "p2", "p3") and listed.reserves == ("r1", "r2") and not listed.open
    assert select(listed, {"p1", "p3", "r2", "r1", "other"}, top_g=3) == ["p1", "p3", "r1"]
    assert select(listed, {"p2", "r2"}, top_g=3) == ["p2", "r2"]
    assert select(listed, {"p1", "p2", "p3"}, top_g=2) == ["p1", "p2"]
    with pytest.raises(SignatureError, match="not a trusted"):
        decode_peer_list(data, run="r", window=7, trusted={STRANGER.hotkey})
    with pytest.raises(InvalidMessage, match="window 7"):
        decode_peer_list(data, run="r", window=8, trusted={VALIDATOR.hotkey})
    forged = json.loads(data)
    forged["peers"] = ["mallory"]
    with pytest.raises(SignatureError, match="does not verify"):
        decode_peer_list(json.dumps(forged).encode(), run="r", window=7, trusted={VALIDATOR.hotkey})
    for junk in (b"[", b"{}", b"x" * (2 << 20)):
        with pytest.raises(InvalidMessage):
            decode_peer_list(junk, run="r", window=7, trusted={VALIDATOR.hotkey})


def test_an_open_list_names_nobody():
    opened = decode_peer_list(encode_peer_list(3, [], [], run="r", signer=VALIDATOR, open=True), run="r", window=3,
                              trusted={VALIDATOR.hotkey})
    assert opened.open and opened.peers == () and opened.reserves == ()
    with pytest.raises(ValueError, match="names nobody"):
        encode_peer_list(3, ["p1"], [], run="r", signer=VALIDATOR, open=True)
    body = json.loads(encode_peer_list(3, ["p1"], [], run="r", signer=VALIDATOR))
    for bad in (True, "yes", None):
        with pytest.raises(InvalidMessage, match="open"):
            decode_peer_list(json.dumps({**body, "open": bad}).encode(), run="r", window=3, trusted={VALIDATOR.hotkey})


def _lists(**by_window):
    """in_time_list for choose_list: {window: PeerList} of the lists stored in time."""
    found = {int(w[1:]): v for w, v in by_window.items()}
    return lambda v: found.get(v)


A = PeerList(5, "v", ("a",), ("b",))
B = PeerList(8, "v", ("c",), ())
OPEN = PeerList(4, "v", (), (), open=True)


def test_the_windows_own_list_governs_when_it_is_in_time():
    choice = choose_list(8, _lists(w5=A, w8=B))
    assert (choice.followed, choice.list_window, choice.in_time, choice.rule) == (B, 8, True, "list")


def test_a_late_or_missing_list_falls_back_to_the_most_recent_list_in_time():
    choice = choose_list(10, _lists(w5=A, w8=B))  # windows 9 and 10: late or missing
    assert (choice.followed, choice.list_window, choice.in_time, choice.rule) == (B, 8, False, "fallback")
    assert choose_list(7, _lists(w5=A, w8=B)).followed == A


def test_every_valid_message_counts_only_while_the_network_never_had_a_list():
    for choice in (choose_list(0, _lists()), choose_list(LOOKBACK, _lists()), choose_list(6, _lists(w4=OPEN))):
        assert choice.followed is None and choice.rule == "open"
    assert choose_list(4, _lists(w4=OPEN)).in_time
    assert choose_list(6, _lists(w4=OPEN, w5=A)).followed == A  # once a list named peers, never open again


def test_a_validator_silent_beyond_the_lookback_leaves_an_empty_list():
    silent = choose_list(5 + LOOKBACK + 1, _lists(w5=A))
    assert silent.rule == "none" and silent.followed.peers == () and silent.followed.reserves == ()
    assert select(silent.followed, {"a", "b"}, top_g=20) == []
    assert choose_list(5 + LOOKBACK, _lists(w5=A)).followed == A  # the lookback's edge still counts


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    cfg = load_config(overrides=["data.seq_len=64", "data.max_tokens=300000"])
    data = tmp_path_factory.mktemp("data")
    prepare(cfg.data, data)
    return data


def test_a_peer_aggregates_the_list_that_governs_the_window(tmp_path, data_dir):
    cfg = load_config(overrides=["data.seq_len=64", "data.max_tokens=300000", "timing.blocks_per_window=10",
                                 "timing.upload_slot_s=60", "model.device=cpu", "sparseloco.top_g=2"])
    chain = LocalChain(tmp_path / "chain.db", clock="manual")
    vstore = FileStore(tmp_path / "v")
    chain.register(VALIDATOR.hotkey, stake=100.0, validator_permit=True)
    chain.commit(VALIDATOR, BucketCard("file", str(vstore.root)).encode())
    peers = {n: Identity.from_seed(n) for n in ("p1", "p2", "p3")}
    stores = {n: FileStore(tmp_path / n) for n in peers}
    for n, ident in peers.items():
        chain.register(ident.hotkey)
        chain.commit(ident, BucketCard("file", str(stores[n].root)).encode())
    chain.register(PEER.hotkey)
    me = Peer(cfg, PEER, chain, FileStore(tmp_path / "me"),
              PeerOptions(run_dir=tmp_path / "run", data_dir=data_dir, allow_local_cards=True))
    p1, p2, p3 = (peers[n].hotkey for n in ("p1", "p2", "p3"))

    def publish(window, named, reserves=(), late=False, open=False):
        key = keys.peer_list(cfg.run_name, window)
        vstore.put(key, encode_peer_list(window, named, reserves, run=me.run_hash, signer=VALIDATOR, open=open))
        stamp = me.clock.list_deadline(window) + (0.5 if late else 0.0)  # exactly at the deadline still counts
        os.utime(vstore.root / key, (stamp, stamp))

    chain.advance(30)  # window 3 opens: the upload slot of window 2
    for n in ("p1", "p2"):  # p3 uploads nothing
        cts = ErrorFeedback(me.spec, cfg.sparseloco).compress({k: torch.randn(s) for k, s in me.spec.items()})
        stores[n].put(keys.message(cfg.run_name, 2, peers[n].hotkey),
                      encode_message(cts, window=2, run=me.run_hash, codec=cfg.sparseloco, signer=peers[n]))

    def gathered():
        result = me.gather(2)
        return set(result.messages), result.list_rule, result.list_window

    assert gathered() == ({p1, p2}, "open", None)  # never a list: every valid message
    publish(1, [], open=True)
    assert gathered() == ({p1, p2}, "open", 1)  # the most recent list in time is open: still everyone
    publish(2, [p1, p3], [p2])
    assert gathered() == ({p1, p2}, "list", 2)  # p3 missing: reserve p2 fills in
    assert me.gather(2).missing == [p3]
    publish(2, [p2])
    assert gathered() == ({p2}, "list", 2)  # unlisted p1 is left out
    publish(2, [])
    assert gathered() == (set(), "list", 2)  # a list that names nobody: nobody
    publish(2, [p2], late=True)
    assert gathered() == ({p1, p2}, "open", 1)  # late: the list in time before it was open
    publish(1, [p1])
    assert gathered() == ({p1}, "fallback", 1)  # late: the most recent list in time, restricted to this window
    publish(1, [p3])
    assert gathered() == (set(), "fallback", 1)  # ... whose only peer sent nothing: nobody, never everyone


@pytest.mark.slow
def test_with_the_list_late_in_alternate_windows_every_node_falls_back_alike(tmp_path, data_dir):
    from peers.behaviours import Behaviour, Noise, RandomDataTrainer, SignFlip
    from peers.sim.lockstep import build, run_window

    cfg = load_config(overrides=[
        "inner.steps=4", "train.batch_size=4", "data.seq_len=64", "data.max_tokens=300000", "inner.warmup_steps=2",
        "inner.lr=3e-3", "timing.blocks_per_window=10", "timing.upload_slot_s=20", "model.device=cpu",
        "train.eval_batches=1", "validator.eval_own_sequences=16", "validator.eval_random_sequences=64",
        "validator.list_min_ma=0.1"])  # listed after 3 loss tests that show the own-data advantage
    behaviours = {"honest-0": Behaviour(), "honest-1": Behaviour(), "noise": Noise(), "sign-flip": SignFlip(),
                  "random-data": RandomDataTrainer()}
    net = build(tmp_path / "net", cfg, behaviours, data_dir)
    adversaries = {net.peers[n].identity.hotkey for n in ("noise", "sign-flip", "random-data")}
    rules, first_list = [], None
    for window in range(7):
        record = run_window(net)
        lines = {n: json.loads((p.opts.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
                 for n, p in net.peers.items()}
        assert {line["window"] for line in lines.values()} == {window}
        # every node that follows the network ends the window on the validator's weights
        assert {lines[n]["fingerprint"] for n in lines} == {record["fingerprint"]}, window
        honest = [lines[n] for n in ("honest-0", "honest-1")]
        assert all(set(line["gathered"]) == set(record["aggregated"]) for line in honest)
        rules.append({line["list"] for line in honest})
        if first_list is None and rules[-1] & {"list", "fallback"}:
            first_list = window
        if first_list is not None:  # once a list named peers, no adversary's message enters an aggregate
            assert not set(record["aggregated"]) & adversaries, (window, record["aggregated"])
        if window % 2 == 0:  # the list for the next (odd) window is stored after its deadline
            key = net.validator.store.root / keys.peer_list(cfg.run_name, window + 1)
            stamp = net.validator.clock.list_deadline(window + 1) + 1.0
            os.utime(key, (stamp, stamp))
    assert first_list is not None and first_list <= 4, rules  # three winning tests: listed from window 3
    assert rules[0] == {"open"}
    for window in range(first_list + 1, 7):  # odd windows follow the previous window's list
        assert rules[window] == ({"fallback"} if window % 2 else {"list"}), (window, rules)
    assert {"fallback"} in rules[first_list + 1:]
