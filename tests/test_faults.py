"""Injected faults: flaky storage, an unreachable chain, a jumping clock. Nodes retry, fall back or
wait; nothing is corrupted, and no peer is scored for the infrastructure's fault."""

import json
import time
import types
import uuid

import pytest

from gauntlet.config import SparseLoCoConfig, load_config
from gauntlet.data import prepare
from gauntlet.errors import ChainError, ObjectNotFound, StorageError
from gauntlet.identity import Identity
from gauntlet.sparseloco import fingerprint
from gauntlet.storage.s3_store import S3Store
from peers.behaviours import Behaviour
from peers.network.gather import gather
from peers.sim.lockstep import build, node_identity, run, run_window
from peers.node.clock import WindowClock
from peers.validator import Validator
from peers.validator_behaviours import Crash, ValidatorBehaviour
from wire_helpers import SHAPES, message

# ------------------------------------------------------------------------------- storage over HTTP


@pytest.fixture
def flaky(fault_proxy):
    """A bucket on moto, reached through the fault-injecting proxy; quick retries, short timeouts."""
    bucket = f"f-{uuid.uuid4().hex[:12]}"
    S3Store(bucket, endpoint_url=f"http://127.0.0.1:{fault_proxy.upstream_port}", region="us-east-1").create_bucket()
    store = S3Store(bucket, endpoint_url=fault_proxy.url, region="us-east-1", read_timeout=0.5, max_attempts=3,
                    backoff_s=0.01)
    store.put("a/object", b"the right bytes" * 100)
    store.put("b/object", b"somebody else's bytes")
    fault_proxy.reset()
    return store, fault_proxy


@pytest.mark.parametrize("mode", ["truncate", "swap", "delay:1.5"])
def test_a_spoiled_body_is_retried_and_the_right_bytes_come_back(flaky, mode):
    store, proxy = flaky
    proxy.corrupt_next_get(1, mode)
    assert store.get("a/object") == b"the right bytes" * 100
    assert proxy.requests["GET"] == 2  # the spoiled answer, then the good one


@pytest.mark.parametrize("mode", ["truncate", "swap", "delay:1.5"])
def test_a_body_spoiled_every_time_is_a_storage_error_never_wrong_bytes(flaky, mode):
    store, proxy = flaky
    proxy.swap_body = store.get("b/object")  # another object's real bytes
    proxy.reset()
    proxy.corrupt_next_get(3, mode)
    with pytest.raises(StorageError) as caught:
        store.get("a/object")
    assert not isinstance(caught.value, ObjectNotFound)
    assert proxy.requests["GET"] == 3


def test_gather_blames_the_infrastructure_for_unreadable_messages_not_the_peer(flaky):
    store, proxy = flaky
    alice = Identity.from_seed("alice")
    cfg = SparseLoCoConfig()
    data, spec = message(cfg, alice, window=3, run="r"), SHAPES
    from gauntlet.storage import keys

    store.put(keys.message("r", 3, alice.hotkey), data)
    for fault in (lambda: proxy.fail_next(10, 503), lambda: proxy.corrupt_next_get(10, "swap")):
        proxy.reset()
        fault()
        result = gather(3, {alice.hotkey: store}, run="r", run_hash="r", registered={alice.hotkey}, spec=spec,
                        codec=cfg, slot=None, max_bytes=1 << 24, timeout=30)
        assert alice.hotkey in result.failed and not result.invalid and not result.missing
    proxy.reset()
    result = gather(3, {alice.hotkey: store}, run="r", run_hash="r", registered={alice.hotkey}, spec=spec,
                    codec=cfg, slot=None, max_bytes=1 << 24, timeout=30)
    assert alice.hotkey in result.messages


# ------------------------------------------------------------------------------ nodes in lockstep

SETTINGS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
            "timing.blocks_per_window=10", "timing.upload_slot_s=20", "model.device=cpu", "train.eval_batches=1",
            "validator.checkpoint_every=5", "validator.eval_peers=3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    prepare(load_config(overrides=SETTINGS).data, path)
    return path


class Unreadable:
    """A store whose reads fail like a dead link (writes untouched); ``broken`` switches it."""

    def __init__(self, inner, broken=True, keys_containing=""):
        self.inner, self.broken, self.keys_containing = inner, broken, keys_containing

    def _check(self, key):
        if self.broken and self.keys_containing in key:
            raise StorageError(f"get {key}: connection timed out (injected)")

    def get(self, key, max_bytes=None):
        self._check(key)
        return self.inner.get(key, max_bytes)

    def read(self, key, max_bytes=None):
        self._check(key)
        return self.inner.read(key, max_bytes)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def break_view(node, hotkey, **kw):
    """Make ``node``'s reads of ``hotkey``'s bucket fail."""
    card = node.chain.commitments()[hotkey].data
    sources = node.directory.sources
    node.directory.view()  # fill the cache of stores
    sources[card] = Unreadable(sources[card], **kw)
    return sources[card]


def honest(n):
    return {f"honest-{i}": Behaviour() for i in range(n)}


@pytest.mark.slow  # lockstep networks over several windows
def test_a_validator_that_cannot_read_a_peer_neither_scores_nor_penalises_it(tmp_path, data_dir):
    cfg = load_config(overrides=SETTINGS)
    net = build(tmp_path / "net", cfg, honest(3), data_dir)
    net.validator.RETRY_BACKOFF_S = 0.0
    run(net, 2)
    victim = node_identity(cfg.seed, "honest-1").hotkey
    before = net.validator.book.records[victim]
    link = break_view(net.validator, victim)
    record = run_window(net)  # window 2: the validator's link to honest-1 is down (every retry too)
    assert record["peers"][victim]["status"].startswith("unreachable")
    after = net.validator.book.records[victim]
    assert (after.penalty, after.ma, after.mu, after.sigma, after.sync) == (before.penalty, before.ma, before.mu,
                                                                          before.sigma, before.sync)
    link.broken = False
    # window 3: honest-1's message is readable again, but its weight sample is not
    other = node_identity(cfg.seed, "honest-2").hotkey
    before = net.validator.book.records[other]
    break_view(net.validator, other, keys_containing="fingerprints")
    record = run_window(net)
    assert record["peers"][victim]["status"] == "present"
    assert record["peers"][other]["steps_behind"] == "unknown"
    after = net.validator.book.records[other]
    assert (after.penalty, after.sync) == (before.penalty, before.sync)
    # nobody was penalised for either fault (the peers aggregated honest-1's window-2 message, the
    # validator could not: a fraction of a step apart, well inside the sync tolerance)
    assert all(r.penalty == 1.0 for r in net.validator.book.records.values())


@pytest.mark.slow  # lockstep networks over several windows
def test_a_peer_that_cannot_read_a_message_replays_the_validators_list_and_never_applies_a_partial_view(
        tmp_path, data_dir):
    from peers.network.gather import GatherResult
    from peers.network.replay import ReplayIncomplete

    cfg = load_config(overrides=SETTINGS + ["timing.gather_timeout_s=1"])
    net = build(tmp_path / "net", cfg, honest(3), data_dir)
    run(net, 2)
    peer = net.peers["honest-0"]
    peer.RETRY_BACKOFF_S = 0.0
    victim = node_identity(cfg.seed, "honest-2").hotkey
    link = break_view(peer, victim)
    read_again = peer.read_messages

    def link_back_then_read(window, hotkeys, network=None):  # the link comes back after the gathers failed
        link.broken = False
        return read_again(window, hotkeys, network)

    peer.read_messages = link_back_then_read
    record = run_window(net)
    line = json.loads((tmp_path / "net/peers/honest-0/state/metrics.jsonl").read_text().splitlines()[-1])
    assert line["window"] == 2 and line["replayed"] and victim in line["failed"]
    assert sorted(line["gathered"]) == sorted(record["aggregated"]) and len(record["aggregated"]) == 3
    weights = dict(peer.model.named_parameters())
    assert fingerprint(weights) == record["fingerprint"] == fingerprint(dict(net.validator.model.named_parameters()))

    # with the link down for good, nothing of the window is applied: the peer tries the window again
    peer.read_messages = read_again
    link.broken = True
    replay = peer.feed.replay(2)
    others = peer.read_messages(2, [h for h, _ in replay.messages if h != victim])
    with pytest.raises(ReplayIncomplete, match=r"window 2: 1 of the 3 messages the validator applied cannot be read"):
        peer._replay(replay, GatherResult(2, messages=dict(others.messages)))
    assert fingerprint(dict(peer.model.named_parameters())) == record["fingerprint"]


# ------------------------------------------------------------------------------------------ chain

class FlakyChain:
    """Wraps a chain: every call answers ``delay`` seconds late (a slow endpoint), and the first
    ``failures`` reads of the metagraph raise ChainError (an unreachable one)."""

    def __init__(self, inner, failures, delay=0.0):
        self.inner, self.failures, self.delay, self.calls = inner, failures, delay, 0

    def metagraph(self):
        if self.failures:
            self.failures -= 1
            raise ChainError("ws://chain: connection refused (injected)")
        return self.__getattr__("metagraph")()

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def slow(*args, **kwargs):
            self.calls += 1
            time.sleep(self.delay)
            return attr(*args, **kwargs)

        return slow


@pytest.mark.slow  # lockstep networks over several windows
def test_a_window_the_chain_fails_is_evaluated_again_and_a_slow_chain_changes_nothing(tmp_path, data_dir):
    cfg = load_config(overrides=SETTINGS + ["validator.weights_every=1"])
    straight = build(tmp_path / "a", cfg, honest(3), data_dir)
    run(straight, 3)
    flaky = build(tmp_path / "b", cfg, honest(3), data_dir)
    run(flaky, 2)
    v, chain = flaky.validator, flaky.validator.chain
    v.chain = v.directory.chain = v.clock.chain = FlakyChain(chain, failures=1, delay=0.2)  # every reader of it
    book = dict(flaky.validator.book.records)
    with pytest.raises(ChainError):
        flaky.validator.evaluate_window(2)
    assert flaky.validator.book.records == book  # nothing scored, applied or published before the failure
    run(flaky, 1)  # slow but reachable: the same window, the same result
    assert flaky.validator.chain.calls > 0
    assert flaky.validator.book.records == straight.validator.book.records
    assert chain.weights() == straight.chain.weights()


def test_the_validator_loop_retries_a_window_until_the_chain_answers(monkeypatch):
    calls = []

    def evaluate(window):
        calls.append(window)
        if len(calls) <= 2:
            raise ChainError("unreachable (injected)")
        return {"durations": {"total_s": 0.1}}

    clock = types.SimpleNamespace(wait_until=lambda when: None, slot=lambda w: (0.0, 0.0), sleep=lambda s: None,
                                  current_window=lambda: 5)
    node = types.SimpleNamespace(
        start=lambda: None, book=types.SimpleNamespace(window=4), opts=types.SimpleNamespace(stop_after_window=6),
        clock=clock, evaluate_window=evaluate, RETRY_S=0.0, _check_fit=lambda w, s: None,
        behaviour=ValidatorBehaviour())
    Validator._loop(node)
    assert calls == [5, 5, 5, 6]
    # a validator whose behaviour stops it (crash) evaluates up to that window and no further
    calls.clear()
    node.book.window, node.behaviour = 4, Crash()
    node.behaviour.stop_window = 5
    Validator._loop(node)
    assert calls == [5, 5, 5]


# ------------------------------------------------------------------------------------------ clock

class WallChain:
    """A chain whose blocks follow the real clock (``block_time`` apart), whatever time.time says."""

    def __init__(self, real, block_time=0.1, fail=False):
        self.real, self.block_time, self.fail, self.genesis = real, block_time, fail, real()

    def block(self):
        if self.fail:
            raise ChainError("unreachable (injected)")
        return int((self.real() - self.genesis) / self.block_time)

    def timestamp(self, block):
        return self.genesis + block * self.block_time


def wall_clock(chain: WallChain) -> WindowClock:
    """A node's clock on ``chain``, asking the chain every 0.2 s during a wait."""
    from peers.ops.metrics import NodeMetrics

    clock = WindowClock(chain, load_config(overrides=["timing.blocks_per_window=10"]).timing, NodeMetrics("peer", "5Fx"))
    clock.CHAIN_CHECK_S = 0.2
    return clock


@pytest.mark.parametrize("jump", [+100.0, -100.0])
def test_a_local_clock_that_jumps_neither_hurries_nor_delays_the_node(monkeypatch, jump):
    real = time.time
    clock = wall_clock(WallChain(real))
    monkeypatch.setattr("peers.node.clock.time.time", lambda: real() + jump)
    when = real() + 0.8
    clock.wait_until(when)
    assert real() >= when - 0.1 - 1e-3  # not before the chain's block reached it (one block of slack)
    assert real() < when + 1.0  # and not a hundred seconds late


def test_without_the_chain_the_local_clock_decides(monkeypatch):
    real = time.time
    clock = wall_clock(WallChain(real, fail=True))
    t0 = real()
    clock.wait_until(t0 + 0.3)
    assert 0.3 <= real() - t0 < 1.5


def test_the_peer_loop_retries_without_training_a_window_twice():
    from peers.peer import Peer

    events, failures = [], {"block": 1, "apply": 1}

    def current_window():
        if failures["block"]:
            failures["block"] -= 1
            raise ChainError("unreachable (injected)")
        return 3

    def apply(window, prefer_published=False):
        if failures["apply"]:
            failures["apply"] -= 1
            raise StorageError("timed out (injected)")
        events.append(("apply", window, prefer_published))
        return "result"

    clock = types.SimpleNamespace(current_window=current_window, wait_until=lambda when: None,
                                  window_start=lambda w: 0.0, slot=lambda w: (0.0, 0.0), sleep=lambda s: None)
    node = types.SimpleNamespace(
        start=lambda: None, window_done=2, opts=types.SimpleNamespace(stop_after_window=3), clock=clock,
        in_sync=True, _train_and_upload=lambda w: events.append(("train", w)) or {"uploaded": True, "train_s": 0.1},
        apply=apply, finish=lambda w, r, facts, **kw: events.append(("finish", w, facts["trained"])), RETRY_S=0.0,
        _check_fit=lambda w, train_s, apply_s: None)
    node._apply_and_finish = lambda w, trained: Peer._apply_and_finish(node, w, trained)
    Peer._loop(node)
    assert events == [("train", 3), ("apply", 3, False), ("finish", 3, True)]


def test_a_window_that_cannot_be_replayed_is_retried_until_a_newer_checkpoint_ends_the_wait():
    from peers.network.replay import ReplayIncomplete
    from peers.peer import Peer

    events, checkpoints = [], [False, True]  # the first wait finds no newer checkpoint, the second one

    def apply(window, prefer_published=False):
        events.append(("apply", window))
        if window == 3:
            raise ReplayIncomplete("window 3: 1 of the 2 messages the validator applied cannot be read (injected)")
        return "result"

    def load_checkpoint():
        found = checkpoints.pop(0)
        if found:
            node.window_done = 4  # the validator's checkpoint after window 4
        events.append(("checkpoint", found))
        return found

    clock = types.SimpleNamespace(current_window=lambda: 6, wait_until=lambda when: None, window_start=lambda w: 0.0,
                                  slot=lambda w: (0.0, 0.0), sleep=lambda s: events.append(("sleep", s)))
    node = types.SimpleNamespace(
        start=lambda: None, window_done=2, opts=types.SimpleNamespace(stop_after_window=5), clock=clock,
        in_sync=False, apply=apply, load_checkpoint=load_checkpoint, RETRY_S=7.0,
        finish=lambda w, r, facts, **kw: events.append(("finish", w, facts["trained"])),
        _check_fit=lambda w, train_s, apply_s: None)
    node._apply_and_finish = lambda w, trained: Peer._apply_and_finish(node, w, trained)
    Peer._loop(node)
    assert events == [("apply", 3), ("checkpoint", False), ("sleep", 7.0),  # nothing newer: wait, try again
                      ("apply", 3), ("checkpoint", True),  # a newer checkpoint: windows 3 and 4 are in it
                      ("apply", 5), ("finish", 5, False)]  # never a partial window 3, never trained late
