"""Peers as separate OS processes on one embedded chain: sync, loss, restarts, late joiners.

Every wait is on an event (a node booted, a window recorded, the chain's clock) with a deadline;
the nodes run until the scenario has happened and are then stopped with SIGTERM."""

import pytest

from gauntlet.config import DataConfig
from gauntlet.data import prepare
from gauntlet.identity import Identity
from gauntlet.storage.s3_store import S3Store
from live_nodes import Nodes, last_window, metrics, pending_chain, windows

SETTINGS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
            "timing.blocks_per_window=40", "timing.upload_slot_s=1.0", "timing.slot_grace_s=0.3",
            "timing.gather_timeout_s=10", "train.eval_batches=2"]
BLOCK_TIME = 0.1  # 40 blocks: 4-second windows
TRAINED = 4  # windows every peer must have trained before the network is stopped

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    prepare(DataConfig(seq_len=64), path)  # once, before the peers start
    return path


@pytest.fixture
def network(tmp_path, data_dir):
    def make(names):
        url, chain = pending_chain(tmp_path / "chain.db", [Identity.from_seed(n).hotkey for n in names], BLOCK_TIME)
        nodes = Nodes(tmp_path, data_dir, url, SETTINGS)
        made.append(nodes)
        return nodes, chain

    made = []
    yield make
    for nodes in made:
        nodes.close()


def trained_by_all(nodes, names) -> list[int]:
    per_peer = {n: windows(nodes.run_dir(n)) for n in names}
    common = set.intersection(*(set(w) for w in per_peer.values()))
    return sorted(w for w in common if all(per_peer[n][w].get("trained") for n in names))


def assert_in_sync_and_learning(nodes, names):
    per_peer = {n: windows(nodes.run_dir(n)) for n in names}
    trained = trained_by_all(nodes, names)
    assert len(trained) >= TRAINED, f"too few windows trained by everyone: {trained}"
    for w in set().union(*per_peer.values()):
        prints = {per_peer[n][w]["fingerprint"] for n in names if w in per_peer[n]}
        assert len(prints) == 1, f"window {w}: peers disagree on the weights"
    for w in trained:
        assert sorted(per_peer[names[0]][w]["gathered"]) == sorted(Identity.from_seed(n).hotkey for n in names)
    first, final = per_peer[names[0]][trained[0]]["val_loss"], per_peer[names[0]][trained[-1]]["val_loss"]
    assert final < first - 0.3, f"validation loss did not go down: {first} -> {final}"


def run_until_trained(nodes, chain, names):
    nodes.start_when_ready(chain, names)
    nodes.wait_for(lambda: len(trained_by_all(nodes, names)) >= TRAINED, f"{TRAINED} windows trained by all")
    nodes.stop()


def test_peers_on_file_stores_and_s3_buckets_stay_bit_identical_and_learn(network, moto_port, tmp_path):
    """One network, two kinds of bucket: a and b write to file stores, c to an S3 bucket; each reads the
    others through the card it published."""
    names = ["a", "b", "c"]
    nodes, chain = network(names)
    nodes.launch("a")
    nodes.launch("b")
    bucket = f"peer-c-{tmp_path.name[-8:].lower().replace('_', '-')}"
    S3Store(bucket, endpoint_url=f"http://127.0.0.1:{moto_port}", region="us-east-1").create_bucket()
    nodes.launch("c", storage=f"s3://{bucket}?endpoint_url=http://127.0.0.1:{moto_port}&region=us-east-1",
                 extra=["--storage.read-access-key", "reader", "--storage.read-secret-key", "reader-secret"])
    run_until_trained(nodes, chain, names)
    assert_in_sync_and_learning(nodes, names)
    assert any(o.key.endswith(".safetensors") for o in S3Store(
        bucket, endpoint_url=f"http://127.0.0.1:{moto_port}", region="us-east-1").list())  # c did use S3


def test_a_killed_peer_resumes_with_its_state_and_a_late_peer_catches_up(network):
    names = ["a", "b", "c"]
    nodes, chain = network(names)
    for n in ("a", "b"):
        nodes.launch(n)
    nodes.start_when_ready(chain, ["a", "b"])
    nodes.wait_for(lambda: last_window(nodes.run_dir("b")) >= 2, "b to finish window 2")
    nodes.kill("b")  # right after a window was recorded: in the next window's training or waits
    saved = metrics(nodes.run_dir("b"))[-1]
    down_until = chain.block() + 40
    nodes.wait_for(lambda: chain.block() >= down_until, "a window to pass while b is down")
    nodes.launch("b")
    nodes.launch("c")  # late: several windows behind, no validator to take a checkpoint from

    def caught_up_and_trained() -> bool:
        late = windows(nodes.run_dir("c"))
        first_trained = min((w for w, m in late.items() if m.get("trained")), default=None)
        return first_trained is not None and min(last_window(nodes.run_dir(n)) for n in names) > first_trained

    nodes.wait_for(caught_up_and_trained, "the late peer to catch up, train, and everyone to pass that window")
    nodes.stop()

    resumed = [m for m in metrics(nodes.run_dir("b")) if m.get("event") == "resumed"]
    assert resumed and resumed[0]["window"] == saved["window"]
    assert resumed[0]["ef_checksum"] == saved["ef_checksum"]  # error feedback survived the crash
    assert resumed[0]["fingerprint"] == saved["fingerprint"]
    late = windows(nodes.run_dir("c"))
    assert not late[0]["trained"] and any(m["trained"] for m in late.values())  # caught up, then trained
    per_peer = {n: windows(nodes.run_dir(n)) for n in names}
    common = set.intersection(*(set(w) for w in per_peer.values()))
    assert max(common) > min(w for w, m in late.items() if m["trained"])
    for w in set().union(*per_peer.values()):
        assert len({per_peer[n][w]["fingerprint"] for n in names if w in per_peer[n]}) == 1, f"window {w}"
