"""Messages crossing machines: signed, for one window, attributed to the bucket owner."""

import pytest

from gauntlet.chain.local import LocalChain
from gauntlet.errors import InvalidMessage, ObjectNotFound, SignatureError
from gauntlet.identity import Identity
from gauntlet.storage import BucketCard, FileStore, keys, store_from_card
from peers.network.exchange import fetch_message
from wire_helpers import SHAPES, message

RUN = "run-a"
ALICE, BOB, MALLORY = (Identity.from_seed(s) for s in ("alice", "bob", "mallory"))


@pytest.fixture
def net(tmp_path, cfg):
    chain = LocalChain(tmp_path / "chain.db", clock="manual")
    stores = {}
    for ident in (ALICE, BOB):
        chain.register(ident.hotkey)
        stores[ident.hotkey] = FileStore(tmp_path / ident.hotkey[:8])
        chain.commit(ident, BucketCard("file", str(stores[ident.hotkey].root)).encode())
    return chain, stores


def fetch(chain, hotkey, window, cfg, max_bytes=1 << 20):
    card = BucketCard.decode(chain.commitments()[hotkey].data)
    registered = {n.hotkey for n in chain.metagraph()}
    return fetch_message(store_from_card(card, allow_local=True), run=RUN, window=window, hotkey=hotkey,
                         registered=registered, spec=SHAPES, codec=cfg, max_bytes=max_bytes)


def test_a_published_message_is_fetched_through_the_chain_card(net, cfg):
    chain, stores = net
    stores[ALICE.hotkey].put(keys.message(RUN, 5, ALICE.hotkey), message(cfg, ALICE, window=5, run=RUN))
    msg = fetch(chain, ALICE.hotkey, 5, cfg)
    assert msg.hotkey == ALICE.hotkey and msg.window == 5


def test_a_tampered_message_is_rejected(net, cfg):
    chain, stores = net
    data = bytearray(message(cfg, ALICE, window=5, run=RUN))
    data[-10] ^= 0xFF
    stores[ALICE.hotkey].put(keys.message(RUN, 5, ALICE.hotkey), bytes(data))
    with pytest.raises(InvalidMessage, match="sha256"):
        fetch(chain, ALICE.hotkey, 5, cfg)


def test_a_replayed_message_from_another_window_is_rejected(net, cfg):
    chain, stores = net
    old = message(cfg, ALICE, window=4, run=RUN)
    stores[ALICE.hotkey].put(keys.message(RUN, 5, ALICE.hotkey), old)  # re-uploaded as window 5
    with pytest.raises(InvalidMessage, match="window 4, expected 5"):
        fetch(chain, ALICE.hotkey, 5, cfg)


def test_a_message_copied_into_another_peers_bucket_is_rejected(net, cfg):
    chain, stores = net
    stolen = message(cfg, ALICE, window=5, run=RUN)
    stores[BOB.hotkey].put(keys.message(RUN, 5, BOB.hotkey), stolen)  # Bob passes off Alice's work
    with pytest.raises(InvalidMessage, match="another hotkey"):
        fetch(chain, BOB.hotkey, 5, cfg)


def test_a_forged_signature_is_rejected(net, cfg):
    chain, stores = net
    from wire_helpers import edit_gauntlet_header

    forged = edit_gauntlet_header(message(cfg, MALLORY, window=5, run=RUN), lambda h: h.update(hotkey=BOB.hotkey))
    stores[BOB.hotkey].put(keys.message(RUN, 5, BOB.hotkey), forged)
    with pytest.raises(SignatureError):
        fetch(chain, BOB.hotkey, 5, cfg)


def test_unregistered_senders_oversized_and_missing_uploads(net, cfg, tmp_path):
    chain, stores = net
    registered = {n.hotkey for n in chain.metagraph()}
    with pytest.raises(InvalidMessage, match="not registered"):
        fetch_message(FileStore(tmp_path / "m"), run=RUN, window=5, hotkey=MALLORY.hotkey, registered=registered,
                      spec=SHAPES, codec=cfg, max_bytes=1 << 20)
    stores[ALICE.hotkey].put(keys.message(RUN, 5, ALICE.hotkey), message(cfg, ALICE, window=5, run=RUN))
    with pytest.raises(InvalidMessage, match="too large"):
        fetch(chain, ALICE.hotkey, 5, cfg, max_bytes=100)
    with pytest.raises(ObjectNotFound):  # published nothing: not an invalid message
        fetch(chain, ALICE.hotkey, 6, cfg)
    assert keys.parse(keys.message(RUN, 5, ALICE.hotkey)).hotkey == ALICE.hotkey
