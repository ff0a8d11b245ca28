"""The validator's signed peer list: whose messages every node aggregates for a window.

JSON, signed like everything else that crosses machines::

    {"v": 1, "run": RUN_HASH, "window": W, "hotkey": VALIDATOR, "peers": [...], "reserves": [...],
     "signature": HEX}      # sr25519 over b"gauntlet-peer-list-v1:" + sha256(canonical JSON without signature)

``peers`` are the top-G by rating, ``reserves`` the next ones in order. :func:`select` keeps the
listed peers that delivered a valid message and fills the gaps from the reserves, up to G.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.identity import Identity, verify_signature

PREFIX = b"gauntlet-peer-list-v1:"
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class PeerList:
    window: int
    validator: str
    peers: tuple[str, ...]
    reserves: tuple[str, ...]


def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def encode_peer_list(window: int, peers: Sequence[str], reserves: Sequence[str], *, run: str,
                     signer: Identity) -> bytes:
    body = {"v": 1, "run": run, "window": int(window), "hotkey": signer.hotkey, "peers": list(peers),
            "reserves": list(reserves)}
    signature = signer.sign(PREFIX + hashlib.sha256(_canonical(body)).digest()).hex()
    return _canonical({**body, "signature": signature})


def decode_peer_list(data: bytes, *, run: str, window: int, trusted: Collection[str]) -> PeerList:
    if len(data) > MAX_BYTES:
        raise InvalidMessage("peer list is too large")
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidMessage("peer list is not JSON") from None
    if not isinstance(body, dict) or set(body) != {"v", "run", "window", "hotkey", "peers", "reserves", "signature"}:
        raise InvalidMessage("peer list has the wrong fields")
    if body["v"] != 1 or body["run"] != run or body["window"] != window:
        raise InvalidMessage(f"peer list is for run {body['run']} window {body['window']}")
    lists = (body["peers"], body["reserves"])
    if not all(isinstance(x, list) and all(isinstance(h, str) for h in x) for x in lists):
        raise InvalidMessage("peer list entries must be hotkey strings")
    if body["hotkey"] not in trusted:
        raise SignatureError(f"peer list signed by {body['hotkey']}, who is not a trusted validator")
    signature = body.pop("signature")
    try:
        sig = bytes.fromhex(signature)
    except (TypeError, ValueError):
        raise SignatureError("peer list signature is not hex") from None
    if not verify_signature(body["hotkey"], PREFIX + hashlib.sha256(_canonical(body)).digest(), sig):
        raise SignatureError("peer list signature does not verify")
    return PeerList(window, body["hotkey"], tuple(body["peers"]), tuple(body["reserves"]))


def select(peer_list: PeerList, valid: Collection[str], top_g: int) -> list[str]:
    """Listed peers with a valid message, topped up from the reserves in order, at most ``top_g``."""
    chosen = [h for h in peer_list.peers if h in valid][:top_g]
    for h in peer_list.reserves:
        if len(chosen) >= top_g:
            break
        if h in valid and h not in chosen:
            chosen.append(h)
    return chosen
