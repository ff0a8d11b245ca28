"""The validator's replay list: which messages made a window's aggregate, so that a node that missed
the window (a late or restarted peer, or one whose link to a bucket failed) can apply exactly that
aggregate by reading those messages from their senders' buckets — instead of downloading a dense
aggregate from the validator. A few kilobytes per window instead of 4 bytes per parameter.

JSON, signed like the peer list::

    {"v": 1, "run": RUN_HASH, "window": W, "hotkey": VALIDATOR, "fingerprint": HEX,
     "messages": [[HOTKEY, MESSAGE_ID], ...], "signature": HEX}
    # sr25519 over b"gauntlet-replay-v1:" + sha256(canonical JSON without signature)

``messages`` is in the order every node aggregates (hotkey order). A message's id is the sha256 of its
signed header, which holds the sha256 of its data: the id pins every byte of the message. The
``fingerprint`` is that of the weights after the window's outer step.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gauntlet.errors import InvalidMessage, StorageError
from gauntlet.identity import Identity
from gauntlet.sparseloco.wire import SIGNING_PREFIX
from peers.network import signed_json

PREFIX = b"gauntlet-replay-v1:"
MAX_BYTES = 4 << 20  # 256 peers take ~30 kB
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"v", "run", "window", "hotkey", "fingerprint", "messages", "signature"}


class ReplayIncomplete(StorageError):
    """Some message a validator applied cannot be read here (yet): the window is not applied, and is
    tried again (the infrastructure's fault, not the sender's)."""


@dataclass(frozen=True)
class ReplayList:
    window: int
    validator: str
    messages: tuple[tuple[str, str], ...]  # (hotkey, message id), in aggregation order
    fingerprint: str


def message_id(message) -> str:
    """The id of a validated message (:class:`~gauntlet.sparseloco.wire.Message` or a spooled one):
    the sha256 of its signed header."""
    return bytes(message.digest[len(SIGNING_PREFIX):]).hex()


def encode_replay(window: int, messages: Sequence[tuple[str, str]], fingerprint: str, *, run: str,
                  signer: Identity) -> bytes:
    return signed_json.sign({"v": 1, "run": run, "window": int(window), "hotkey": signer.hotkey,
                             "fingerprint": fingerprint, "messages": [[h, m] for h, m in messages]}, PREFIX, signer)


def decode_replay(data: bytes, *, run: str, window: int, trusted: Collection[str]) -> ReplayList:
    """A checked replay list; InvalidMessage / SignatureError otherwise."""
    body = signed_json.load(data, what="replay list", fields=_FIELDS, max_bytes=MAX_BYTES, run=run, window=window)
    entries = body["messages"]
    if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], str)
            and _HEX64.fullmatch(e[1]) for e in entries):
        raise InvalidMessage("replay list entries must be [hotkey, 64 hex characters]")
    hotkeys = [e[0] for e in entries]
    if hotkeys != sorted(set(hotkeys)):
        raise InvalidMessage("replay list must name each hotkey once, in order")
    if not isinstance(body["fingerprint"], str):
        raise InvalidMessage("replay list fingerprint must be a string")
    signed_json.verify(body, PREFIX, trusted, "replay list")
    return ReplayList(window, body["hotkey"], tuple((h, m) for h, m in entries), body["fingerprint"])
