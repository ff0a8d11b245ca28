"""Who is where: the subnet's registered hotkeys and the bucket each node published on chain (its
card), opened as object stores and kept for as long as the card stays the same."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gauntlet.chain import Chain
from gauntlet.errors import InvalidCommitment
from gauntlet.identity import Identity
from gauntlet.storage import BucketCard, ObjectStore, store_from_card
from peers.network.manifest import is_manifest_card

log = logging.getLogger("gauntlet.node")


@dataclass(frozen=True)
class NetworkView:
    """The network as the chain shows it at one moment."""

    stores: dict[str, ObjectStore]  # each committed peer's store, by hotkey (validators excluded)
    registered: frozenset[str]  # every registered hotkey
    uids: dict[str, int]  # hotkey -> uid
    stakes: dict[str, float] = field(default_factory=dict)  # hotkey -> stake


class Directory:
    def __init__(self, chain: Chain, identity: Identity, own_store: ObjectStore, allow_local_cards: bool) -> None:
        self.chain, self.identity, self.own_store = chain, identity, own_store
        self.allow_local_cards = allow_local_cards  # accept file:// and loopback cards (local networks only)
        self.sources: dict[bytes, ObjectStore] = {}  # opened stores by the card bytes they came from

    def view(self) -> NetworkView:
        """Each committed peer's store, the registered hotkeys, their uids and stakes (one metagraph and
        one commitments read: on Bittensor each is a round trip)."""
        neurons = self.chain.metagraph()
        uids = {n.hotkey: n.uid for n in neurons}
        peers = {n.hotkey for n in neurons if not n.validator_permit}
        stores: dict[str, ObjectStore] = {}
        for hotkey, commitment in self.chain.commitments().items():
            if hotkey not in peers or is_manifest_card(commitment.data):  # the subnet owner publishes no updates
                continue
            store = self.store_of(hotkey, commitment.data)
            if store is not None:
                stores[hotkey] = store
        return NetworkView(stores, frozenset(uids), uids, {n.hotkey: n.stake for n in neurons})

    def store_of(self, hotkey: str, card: bytes) -> ObjectStore | None:
        """The store a node's card points to (this node's own store for its own hotkey); None, with
        a warning, for a card that cannot be used."""
        if hotkey == self.identity.hotkey:
            return self.own_store
        store = self.sources.get(card)
        if store is None:
            try:
                store = store_from_card(BucketCard.decode(card), allow_local=self.allow_local_cards)
            except InvalidCommitment as exc:
                log.warning("ignoring %s: unusable bucket card (%s)", hotkey, exc)
                return None
            self.sources[card] = store
        return store

    def publish_card(self, card: BucketCard | None) -> None:
        """Commit this node's card on chain unless the chain already holds exactly it."""
        if card is None:
            return
        current = self.chain.commitments().get(self.identity.hotkey)
        if current is None or current.data != card.encode():
            self.chain.commit(self.identity, card.encode())
            log.info("published bucket card %r", card)

    def validator(self, trusted: str | None = None) -> tuple[str, ObjectStore] | None:
        """The validator to follow first and its store (see :meth:`validators`)."""
        ranked = self.validators(trusted)
        return ranked[0] if ranked else None

    def validators(self, trusted: str | None = None) -> list[tuple[str, ObjectStore]]:
        """The validators a node may follow, in the order it tries them: ``trusted`` alone if given,
        else every permit holder with a usable card, highest stake first (ties: by hotkey, so that
        every node orders them alike)."""
        commitments = self.chain.commitments()
        ranked = sorted((n for n in self.chain.metagraph() if n.validator_permit and n.hotkey in commitments),
                        key=lambda n: (-n.stake, n.hotkey))
        if trusted:
            ranked = [n for n in ranked if n.hotkey == trusted]
        found = []
        for neuron in ranked:
            if neuron.hotkey == self.identity.hotkey:
                found.append((neuron.hotkey, self.own_store))
                continue
            store = self.store_of(neuron.hotkey, commitments[neuron.hotkey].data)
            if store is not None:
                found.append((neuron.hotkey, store))
        return found
