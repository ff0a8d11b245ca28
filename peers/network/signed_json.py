"""Small signed JSON objects a validator publishes (peer lists, replay lists): canonical JSON with the
signer's hotkey in ``hotkey`` and its sr25519 signature of ``PREFIX + sha256(canonical JSON without
"signature")`` in ``signature``. Reading checks size, shape, run and window, then the signature."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection

from gauntlet.config import canonical_json
from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.identity import Identity, verify_signature


def canonical(body: dict) -> bytes:
    return canonical_json(body).encode()


def sign(body: dict, prefix: bytes, signer: Identity) -> bytes:
    """``body`` (which names ``signer.hotkey``) with its signature, as canonical JSON."""
    signature = signer.sign(prefix + hashlib.sha256(canonical(body)).digest()).hex()
    return canonical({**body, "signature": signature})


def load(data: bytes, *, what: str, fields: set[str], max_bytes: int, run: str, window: int) -> dict:
    """The object's fields, checked for size, JSON, exactly ``fields``, version 1, run and window;
    InvalidMessage naming ``what`` otherwise. The signature is checked by :func:`verify`."""
    if len(data) > max_bytes:
        raise InvalidMessage(f"{what} is too large")
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidMessage(f"{what} is not JSON") from None
    if not isinstance(body, dict) or set(body) != fields:
        raise InvalidMessage(f"{what} has the wrong fields")
    if body["v"] != 1 or body["run"] != run or body["window"] != window:
        raise InvalidMessage(f"{what} is for run {body['run']} window {body['window']}")
    return body


def verify(body: dict, prefix: bytes, trusted: Collection[str], what: str) -> None:
    """Check that a trusted validator signed ``body`` (the ``signature`` field is removed)."""
    if body["hotkey"] not in trusted:
        raise SignatureError(f"{what} signed by {body['hotkey']}, who is not a trusted validator")
    try:
        sig = bytes.fromhex(body.pop("signature"))
    except (TypeError, ValueError):
        raise SignatureError(f"{what} signature is not hex") from None
    if not verify_signature(body["hotkey"], prefix + hashlib.sha256(canonical(body)).digest(), sig):
        raise SignatureError(f"{what} signature does not verify")
