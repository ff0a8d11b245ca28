"""What a node tells its operator each window, when its windows are too short, and how it stops."""

import logging
import threading
import time
import types

import pytest

from gauntlet.config import load_config
from peers.network.explain import window_line
from peers.network.gather import GatherResult
from peers.ops.metrics import NodeMetrics
from peers.node.clock import StopRequested, WindowClock
from peers.peer import Peer

ME, A, B, C = "me", "peer-a", "peer-b", "peer-c"


def result(**fields) -> GatherResult:
    r = GatherResult(7)
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def line(r: GatherResult, trained=True, uploaded=True, follows=True) -> str:
    return window_line(r, hotkey=ME, trained=trained, uploaded=uploaded, follows_network=follows, slot_opened=100.0)


def test_a_window_that_aggregated_says_how_many_and_how_this_peer_took_part():
    assert line(result(messages={ME: 1, A: 1, B: 1})) == "3 peers aggregated"
    assert line(result(messages={A: 1}), trained=False) == \
        "1 peer aggregated (caught up: applied without training, this peer was down or behind while the window ran)"
    assert line(result(messages={A: 1, B: 1}, failed={A: "timed out"}, replayed=True)) == \
        "applied the 2 messages of the validator's replay list (1 message unreadable at first)"


@pytest.mark.parametrize("fields, trained, uploaded, expected", [
    ({"outside_slot": {ME: 103.25}, "missing": [A]}, True, True,
     "nothing aggregated: this peer missed its own upload slot (+3.2 s from its opening); 1 peer uploaded nothing"),
    ({"missing": [ME, A, B]}, True, False,
     "nothing aggregated: this peer uploaded nothing (no update, or the upload failed); 2 peers uploaded nothing"),
    ({"missing": [A, B]}, False, False,
     "nothing aggregated: caught up: applied without training, this peer was down or behind while the window ran; "
     "2 peers uploaded nothing"),
    ({"outside_slot": {A: 1.0}, "invalid": {B: "bad signature"}, "failed": {C: "timed out"}, "messages": {}}, True,
     True, "nothing aggregated: 1 peer uploaded outside the slot, 1 peer sent invalid messages, 1 peer could not be "
           "read"),
    ({"list_unreadable": "GET peers.json timed out after 3 tries"}, True, True,
     "nothing aggregated: the validator's peer list could not be read (GET peers.json timed out after 3 tries)"),
    ({"listed": 2, "missing": [A]}, True, True,
     "nothing aggregated: of the 2 peers the validator listed, 1 peer uploaded nothing"),
    ({"listed": 0, "list_rule": "list", "list_window": 7}, True, True,
     "nothing aggregated: the validator's list names nobody (no peer has shown yet that its updates help)"),
    ({"listed": 0, "list_rule": "fallback", "list_window": 6}, True, True,
     "nothing aggregated: the validator's list of window 6 names nobody (no peer has shown yet that its updates "
     "help)"),
    ({"listed": 0, "list_rule": "none"}, True, True, "nothing aggregated: the validator has published no peer list "
     "in time for too long (nobody's message is applied)"),
    ({}, True, True, "nothing aggregated: no other peer has a bucket card on chain"),
])
def test_a_window_that_aggregated_nothing_says_why(fields, trained, uploaded, expected):
    assert line(result(**fields), trained=trained, uploaded=uploaded) == expected


def test_an_adversary_that_ignores_the_network_says_so():
    assert line(result(messages={A: 1}), follows=False) == \
        "nothing aggregated: this behaviour does not follow the network"


def fake_peer(window_s: float, blocks: int = 30):
    cfg = load_config(overrides=[f"timing.blocks_per_window={blocks}", "timing.upload_slot_s=1.0",
                                 "timing.slot_grace_s=0.3", "inner.steps=4"])
    events = []
    clock = types.SimpleNamespace(window_start=lambda w: 1000.0 + w * window_s)
    return types.SimpleNamespace(cfg=cfg, clock=clock, _event=lambda kind, **f: events.append((kind, f))), events


def test_a_peer_whose_window_work_cannot_fit_says_which_window_length_would(caplog):
    peer, events = fake_peer(window_s=3.0)
    with caplog.at_level(logging.WARNING, logger="gauntlet.peer"):
        Peer._check_fit(peer, 0, train_s=2.0, apply_s=1.0)  # 1.3 s slot + grace + 3.0 s of work > 80 % of 3 s
    assert "needs about 4.3 s, but a window lasts 3.0 s" in caplog.text
    assert "timing.blocks_per_window >= 54 (5 s at 0.10 s per block)" in caplog.text  # 4.3 / 0.8 / 0.1 → 54
    assert events == [("window_too_short", {"window": 0, "train_s": 2.0, "apply_s": 1.0, "window_s": 3.0,
                                            "blocks_per_window_needed": 54})]


def test_a_peer_whose_window_work_fits_says_nothing(caplog):
    peer, events = fake_peer(window_s=10.0, blocks=10)
    with caplog.at_level(logging.WARNING, logger="gauntlet.peer"):
        Peer._check_fit(peer, 0, train_s=2.0, apply_s=1.0)
    assert caplog.text == "" and events == []


def test_a_validator_that_cannot_store_its_list_in_time_says_which_window_length_would(caplog):
    from peers.validator import Validator

    cfg = load_config(overrides=["timing.blocks_per_window=24", "timing.upload_slot_s=4", "timing.slot_grace_s=0.5"])
    chain = types.SimpleNamespace(timestamp=lambda block: 1000.0 + block)  # 1-second blocks: 24-second windows
    node = types.SimpleNamespace(cfg=cfg, clock=WindowClock(chain, cfg.timing, NodeMetrics("validator", "5Fv")))
    with caplog.at_level(logging.WARNING, logger="gauntlet.validator"):
        assert not Validator._check_fit(node, 3, 16.0)  # 16 s of the 20 s before the next list's deadline: fits
        assert caplog.text == ""
        assert Validator._check_fit(node, 3, 16.5)
    assert "took 16.5 s of the 20.0 s between the close of its upload slot" in caplog.text
    assert "timing.blocks_per_window >= 25" in caplog.text  # 16.5 / 0.8 + 4 = 24.6 s


def test_a_stop_request_ends_a_wait_promptly():
    genesis = time.time() - 10.0  # one-second blocks
    chain = types.SimpleNamespace(block=lambda: int(time.time() - genesis), timestamp=lambda b: genesis + b)
    clock = WindowClock(chain, load_config(overrides=["timing.blocks_per_window=10"]).timing,
                        NodeMetrics("peer", "5Fx"))
    threading.Timer(0.3, lambda: clock.request_stop("SIGTERM received")).start()
    started = time.monotonic()
    with pytest.raises(StopRequested, match="SIGTERM"):
        clock.wait_until(time.time() + 3600)  # an hour away
    assert time.monotonic() - started < 60  # it did not wait for the hour (0.5 s on an idle machine)
