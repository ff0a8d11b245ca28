"""The validator's signed peer list: whose messages every node aggregates for a window.

JSON, signed like everything else that crosses machines::

    {"v": 1, "run": RUN_HASH, "window": W, "hotkey": VALIDATOR, "open": false, "peers": [...],
     "reserves": [...], "signature": HEX}
    # sr25519 over b"gauntlet-peer-list-v1:" + sha256(canonical JSON without signature)

``peers`` are the best G of the peers whose evaluations show they help, ``reserves`` the next ones
in order; ``open`` is true only until the validator has named anyone (every valid message counts).
:func:`select` keeps the listed peers that delivered a valid message and fills the gaps from the
reserves, up to G. :func:`choose_list` is the rule every node — the validator included — applies to
decide which list governs a window when the window's own list is late or missing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from gauntlet.errors import InvalidMessage
from gauntlet.identity import Identity
from peers.network import signed_json

PREFIX = b"gauntlet-peer-list-v1:"
MAX_BYTES = 1 << 20
LOOKBACK = 32  # windows a node looks back for the most recent list that was in time
_FIELDS = {"v", "run", "window", "hotkey", "open", "peers", "reserves", "signature"}


@dataclass(frozen=True)
class PeerList:
    window: int
    validator: str
    peers: tuple[str, ...]
    reserves: tuple[str, ...]
    open: bool = False  # nobody named yet: every valid message counts


def encode_peer_list(window: int, peers: Sequence[str], reserves: Sequence[str], *, run: str,
                     signer: Identity, open: bool = False) -> bytes:
    if open and (peers or reserves):
        raise ValueError("an open peer list names nobody")
    return signed_json.sign({"v": 1, "run": run, "window": int(window), "hotkey": signer.hotkey, "open": bool(open),
                             "peers": list(peers), "reserves": list(reserves)}, PREFIX, signer)


def decode_peer_list(data: bytes, *, run: str, window: int, trusted: Collection[str]) -> PeerList:
    body = signed_json.load(data, what="peer list", fields=_FIELDS, max_bytes=MAX_BYTES, run=run, window=window)
    lists = (body["peers"], body["reserves"])
    if not all(isinstance(x, list) and all(isinstance(h, str) for h in x) for x in lists):
        raise InvalidMessage("peer list entries must be hotkey strings")
    if not isinstance(body["open"], bool) or (body["open"] and (body["peers"] or body["reserves"])):
        raise InvalidMessage("an open peer list names nobody")
    signed_json.verify(body, PREFIX, trusted, "peer list")
    return PeerList(window, body["hotkey"], tuple(body["peers"]), tuple(body["reserves"]), body["open"])


def select(peer_list: PeerList, valid: Collection[str], top_g: int) -> list[str]:
    """Listed peers with a valid message, topped up from the reserves in order, at most ``top_g``."""
    chosen = [h for h in peer_list.peers if h in valid][:top_g]
    for h in peer_list.reserves:
        if len(chosen) >= top_g:
            break
        if h in valid and h not in chosen:
            chosen.append(h)
    return chosen


@dataclass(frozen=True)
class ListChoice:
    """Which list governs a window's aggregate, and how it was found."""

    window: int
    followed: PeerList | None  # None: every valid message counts (the network has never had a list)
    list_window: int | None  # the window of the governing list; None when there is none
    in_time: bool  # the window's own list was stored in time
    validator: str | None = None  # whose list governs (None: no list)
    leader: str | None = None  # the validator tried first (highest stake); another governs on failover

    @property
    def failover(self) -> bool:
        """Whether a validator other than the leader governs the window."""
        return self.validator is not None and self.validator != self.leader

    @property
    def rule(self) -> str:
        """``list`` (the window's own), ``fallback`` (an earlier one), ``open`` (every valid message:
        nobody named yet) or ``none`` (no list in time within reach: nobody's message)."""
        if self.followed is None:
            return "open"
        if self.list_window is None:
            return "none"
        return "list" if self.in_time else "fallback"


def choose_list(window: int, in_time_list: Callable[[int], PeerList | None]) -> ListChoice:
    """The list every node follows for ``window`` (docs/protocol.md §3): the window's own list if it
    was stored in time; else the most recent list that was, looking back ``LOOKBACK`` windows (its
    peers that delivered a valid message this window count, see :func:`select`). Every valid message
    counts only while the network has never had a list: no list in time since window 0, or the most
    recent one still open. A validator silent for longer than ``LOOKBACK`` windows leaves the
    network with an empty list — nobody's message is applied until it publishes in time again.

    ``in_time_list(v)``: the validator's list for window ``v`` if it was stored by ``v``'s list
    deadline, else None. Every node reads the same stored objects, so all choose alike."""
    for v in range(window, max(window - LOOKBACK, 0) - 1, -1):
        found = in_time_list(v)
        if found is not None:
            return ListChoice(window, None if found.open else found, v, v == window)
    if window - LOOKBACK <= 0:
        return ListChoice(window, None, None, False)
    return ListChoice(window, PeerList(window, "", (), ()), None, False)
