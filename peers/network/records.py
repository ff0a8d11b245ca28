"""Window records (docs/protocol.md §6): what was trained in a window, by whom, scored how — signed by the
validator and hash-chained, so the history is auditable.

A record is canonical JSON (sorted keys, no spaces) with ``prev`` = the previous record's hash;
``hash = sha256(canonical JSON of the record without "signature")``; the signature is the
validator's sr25519 signature of ``b"gauntlet-record-v1:" + hash``.
"""

from __future__ import annotations

import hashlib
import json

from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.identity import Identity, verify_signature
from peers.network.signed_json import canonical

PREFIX = b"gauntlet-record-v1:"


def record_hash(body: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in body.items() if k != "signature"})).hexdigest()


def seal(body: dict, prev: str, signer: Identity) -> tuple[bytes, str]:
    """Chain a record to ``prev``, sign it; returns (bytes to publish, its hash)."""
    body = {**body, "prev": prev, "validator": signer.hotkey}
    digest = record_hash(body)
    signed = {**body, "signature": signer.sign(PREFIX + bytes.fromhex(digest)).hex()}
    return canonical(signed), digest


def verify_chain(records: list[bytes], trusted: set[str]) -> str:
    """Check a sequence of records (oldest first) links and verifies; returns the head hash."""
    prev = None
    for data in records:
        try:
            body = json.loads(data)
        except json.JSONDecodeError:
            raise InvalidMessage("record is not JSON") from None
        digest = record_hash(body)
        if prev is not None and body.get("prev") != prev:
            raise InvalidMessage(f"record of window {body.get('window')} does not follow the previous one")
        if body.get("validator") not in trusted or not verify_signature(
                body["validator"], PREFIX + bytes.fromhex(digest), bytes.fromhex(body.get("signature", ""))):
            raise SignatureError(f"record of window {body.get('window')} is not signed by a trusted validator")
        prev = digest
    return prev or ""
