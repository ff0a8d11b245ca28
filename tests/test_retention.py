"""A node keeps the last K windows of what it publishes, and its last 2 checkpoints; records and peer
lists stay."""

import pytest

from gauntlet.errors import ConfigError
from gauntlet.storage import FileStore, keys
from peers.ops.retention import check_retain, prune

RUN, ME, OTHER = "run-a", "5Fme", "5Fother"


def fill(store, windows):
    for w in windows:
        store.put(keys.message(RUN, w, ME), b"m")
        store.put(keys.fingerprint(RUN, w, ME), b"f")
        store.put(keys.replay(RUN, w), b"a")
        store.put(keys.peer_list(RUN, w), b"l")
        store.put(keys.record(RUN, w), b"r")
        store.put(keys.message(RUN, w, OTHER), b"not mine")  # a shared bucket: never touched
        store.put(keys.message("run-b", w, ME), b"another run")
        if w % 2 == 0:
            store.put(keys.checkpoint(RUN, w), b"c")


def kinds_by_window(store):
    out = {}
    for info in store.list(""):
        p = keys.parse(info.key)
        if p is not None and p.run == RUN and p.hotkey in (None, ME):
            out.setdefault(p.kind, set()).add(p.window)
    return out


def test_a_restart_prunes_everything_older_and_each_window_then_one_more(tmp_path):
    store = FileStore(tmp_path)
    fill(store, range(10))
    assert prune(store, RUN, ME, newest=9, retain=3, everything=True) == 3 * 7 + 3
    left = kinds_by_window(store)
    assert left["message"] == left["fingerprint"] == left["replay"] == {7, 8, 9}
    assert left["record"] == set(range(10))  # the audit trail stays
    assert left["peer_list"] == set(range(10))  # a late list falls back to an earlier one: all must find it
    assert left["checkpoint"] == {6, 8}  # the last 2 checkpoints
    assert len(store.list(keys.run_prefix("run-b"))) == 10
    assert all(store.head(keys.message(RUN, w, OTHER)) for w in range(10))
    fill(store, [10])
    assert prune(store, RUN, ME, newest=10, retain=3) == 4  # window 7's three objects and checkpoint 6
    left = kinds_by_window(store)
    assert left["message"] == {8, 9, 10} and left["checkpoint"] == {8, 10}


def test_nodes_keep_a_checkpoint_interval_and_three_windows_or_everything():
    assert check_retain(28) == 28 and check_retain(0) == 0 and check_retain(13, "validator", 10) == 13
    with pytest.raises(ConfigError, match="a peer keeps at least 28 windows"):
        check_retain(27)
    with pytest.raises(ConfigError, match=r"a validator keeps at least 13 windows .* replay lists"):
        check_retain(5, "validator", 10)
