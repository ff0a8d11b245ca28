import hashlib
import math
import multiprocessing as mp
import time

import pytest

from gauntlet.chain import open_chain, window_of
from gauntlet.chain.local import LocalChain
from gauntlet.errors import ChainError, ConfigError
from gauntlet.identity import Identity

CTX = mp.get_context("spawn")


def _wait(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError("condition not reached")


def _node(url: str, name: str, other: str, validator: bool, out) -> None:
    chain = open_chain(url)
    me, them = Identity.from_seed(name), Identity.from_seed(other)
    chain.register(me.hotkey, stake=10.0 if validator else 0.0, validator_permit=validator)
    chain.commit(me, f"card of {name}".encode())
    theirs = _wait(lambda: chain.commitments().get(them.hotkey))
    if validator:
        uids = {n.hotkey: n.uid for n in _wait(lambda: len(chain.metagraph()) == 2 and chain.metagraph())}
        chain.set_weights(me, {uids[them.hotkey]: 3.0, uids[me.hotkey]: 1.0})
    else:
        _wait(lambda: chain.weights())
    out.put((name, theirs.data, chain.weights(), [n.hotkey for n in chain.metagraph()]))
    chain.close()


def test_two_processes_register_commit_read_each_other_and_set_weights(tmp_path):
    url = f"local://{tmp_path}/chain.db?clock=manual"
    out = CTX.Queue()
    procs = [CTX.Process(target=_node, args=(url, "miner", "validator", False, out)),
             CTX.Process(target=_node, args=(url, "validator", "miner", True, out))]
    for p in procs:
        p.start()
    results = {name: (data, weights, hotkeys) for name, data, weights, hotkeys in (out.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results["miner"][0] == b"card of validator" and results["validator"][0] == b"card of miner"
    chain = LocalChain(tmp_path / "chain.db")
    uid = {n.hotkey: n.uid for n in chain.metagraph()}
    miner, validator = Identity.from_seed("miner").hotkey, Identity.from_seed("validator").hotkey
    assert results["miner"][1] == {uid[validator]: {uid[miner]: 0.75, uid[validator]: 0.25}}
    assert sorted(results["miner"][2]) == sorted([miner, validator])


def _writer(path: str, hotkey_seed: str, n: int) -> None:
    chain = LocalChain(path)
    me = Identity.from_seed(hotkey_seed)
    for i in range(n):
        payload = f"{i:06d}".encode()
        chain.commit(me, payload + hashlib.sha256(payload).digest())
        chain.register(Identity.from_seed(f"extra-{hotkey_seed}-{i}").hotkey)
    chain.close()


def test_reads_stay_consistent_under_concurrent_writes_from_other_processes(tmp_path):
    path = str(tmp_path / "chain.db")
    chain = LocalChain(path, clock="manual")
    for seed in ("w1", "w2"):
        chain.register(Identity.from_seed(seed).hotkey)
    writers = [CTX.Process(target=_writer, args=(path, seed, 150)) for seed in ("w1", "w2")]
    for p in writers:
        p.start()
    last = {seed: -1 for seed in ("w1", "w2")}
    sizes = []
    while any(p.is_alive() for p in writers) or len(sizes) < 5:
        commitments = chain.commitments()
        for seed in ("w1", "w2"):
            c = commitments.get(Identity.from_seed(seed).hotkey)
            if c is None:
                continue
            counter, digest = c.data[:6], c.data[6:]
            assert hashlib.sha256(counter).digest() == digest  # never a torn row
            assert int(counter) >= last[seed]  # never goes back
            last[seed] = int(counter)
        uids = [n.uid for n in chain.metagraph()]
        assert uids == list(range(len(uids)))  # dense, no half-registered neuron
        sizes.append(len(uids))
        if len(sizes) > 20000:
            break
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sizes == sorted(sizes) and sizes[-1] == 2 + 2 * 150
    assert last == {"w1": 149, "w2": 149}


def test_wall_clock_blocks_and_windows_advance_with_time(tmp_path):
    chain = open_chain(f"local://{tmp_path}/c.db?block_time=0.05")
    first = chain.block()
    _wait(lambda: chain.block() >= first + 4, timeout=10)
    assert window_of(chain.block(), 2) >= window_of(first, 2) + 2
    again = LocalChain(tmp_path / "c.db", block_time=99.0)  # settings come from the file's creator
    assert again.block_time == 0.05 and abs(again.block() - chain.block()) <= 1


def test_manual_clock_moves_only_when_advanced(tmp_path):
    chain = LocalChain(tmp_path / "c.db", clock="manual")
    assert chain.block() == 0
    assert chain.advance(125) == 125 and chain.block() == 125 and window_of(chain.block(), 125) == 1
    with pytest.raises(ChainError, match="back in time"):
        chain.advance(-1)
    with pytest.raises(ChainError, match="clock=manual"):
        LocalChain(tmp_path / "w.db").advance()


def test_chain_rules_are_enforced(tmp_path):
    chain = LocalChain(tmp_path / "c.db", clock="manual")
    miner, stranger = Identity.from_seed("m"), Identity.from_seed("s")
    assert chain.register(miner.hotkey) == 0 and chain.register(miner.hotkey) == 0  # idempotent
    with pytest.raises(ChainError, match="not registered"):
        chain.commit(stranger, b"x")
    with pytest.raises(ChainError, match="384"):
        chain.commit(miner, b"x" * 385)
    chain.commit(miner, b"x" * 384)
    with pytest.raises(ChainError, match="no validator permit"):
        chain.set_weights(miner, {0: 1.0})
    chain.register(miner.hotkey, stake=5.0, validator_permit=True)
    with pytest.raises(ChainError, match="zero"):
        chain.set_weights(miner, {0: 0.0})
    with pytest.raises(ChainError, match=r"uid\(s\) \[1\], not registered"):
        chain.set_weights(miner, {0: 1.0, 1: 1.0})
    chain.set_weights(miner, {0: 1.0})
    chain.register(stranger.hotkey)
    chain.advance(3)
    chain.set_weights(miner, {0: 2.0, 1: 2.0})
    assert chain.weights_history(0) == [(0, {0: 1.0}), (3, {0: 0.5, 1: 0.5})]
    assert chain.weights() == {0: {0: 0.5, 1: 0.5}}


@pytest.mark.parametrize("url, fragment", [
    ("local://relative.db", "absolute"), ("local:///tmp/x.db?color=red", "unknown option"),
    ("bittensor://finney", "NETWORK/NETUID"), ("sqlite:///x.db", "unsupported"),
    ("local:///tmp/x.db?block_time=fast", "could not convert"),
])
def test_bad_chain_urls_are_config_errors(url, fragment):
    with pytest.raises(ConfigError, match=fragment):
        open_chain(url)


def test_a_future_genesis_holds_the_chain_at_block_zero(tmp_path):
    chain = LocalChain(tmp_path / "c.db", block_time=0.05, genesis=time.time() + 60)
    assert chain.block() == 0 and chain.timestamp(1) == pytest.approx(chain.genesis + 0.05)


def test_a_pending_genesis_holds_the_chain_until_someone_starts_it(tmp_path):
    creator = LocalChain(tmp_path / "c.db", block_time=0.05, genesis=math.inf)
    node = open_chain(f"local://{tmp_path}/c.db")  # opened by another party, before the start
    node.register(Identity.from_seed("n").hotkey)  # registering and committing work before the start
    node.commit(Identity.from_seed("n"), b"card")
    assert not node.started and node.block() == 0 and math.isinf(node.timestamp(0))
    genesis = creator.start(time.time() - 1.0)  # as if it had started a second ago: 20 blocks of 0.05 s
    assert node.started and node.genesis == genesis and node.timestamp(3) == pytest.approx(genesis + 0.15)
    assert node.block() >= 20
    assert creator.start(0.0) == genesis  # starting again changes nothing
    with pytest.raises(ChainError, match="pending"):
        LocalChain(tmp_path / "m.db", clock="manual", genesis=math.inf)
