"""The run manifest on the network: signed by the subnet owner, stored in its bucket, its hash on chain.

The owner publishes (``gauntlet run publish``) a signed envelope at ``manifests/RUN_HASH.json`` in
its bucket, and commits its bucket card with the note ``manifest:RUN_HASH``::

    {"v": 1, "hotkey": OWNER, "run_hash": RUN_HASH, "manifest": {"protocol", "requires", "settings"},
     "written_by": GAUNTLET_VERSION, "signature": HEX}
    # sr25519 by OWNER over b"gauntlet-manifest-v1:" + sha256(canonical JSON without signature)

A node that joins reads the subnet owner's hotkey and commitment from the chain, reads the envelope
from the owner's bucket (or its own cached copy), and uses it only if the owner signed it and the
manifest hashes to the committed run hash; it keeps the copy it joined as ``RUN_DIR/manifest.json``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from gauntlet import __version__
from gauntlet.chain import Chain
from gauntlet.config import check_manifest, manifest_hash
from gauntlet.errors import ConfigError, InvalidCommitment, InvalidMessage, StorageError
from gauntlet.identity import Identity
from gauntlet.storage import BucketCard, ObjectStore, keys, store_from_card
from peers.network import signed_json

log = logging.getLogger("gauntlet.node")
PREFIX = b"gauntlet-manifest-v1:"
NOTE = "manifest:"
MAX_BYTES = 64 << 10
_FIELDS = {"v", "hotkey", "run_hash", "manifest", "written_by", "signature"}


@dataclass(frozen=True)
class SignedManifest:
    document: dict  # {"protocol", "requires", "settings"}
    run_hash: str
    owner: str  # the hotkey that signed it
    written_by: str  # the gauntlet release that wrote it
    data: bytes  # the signed envelope, as stored


def encode_manifest(document: dict, signer: Identity) -> bytes:
    body = {"v": 1, "hotkey": signer.hotkey, "run_hash": manifest_hash(document), "manifest": document,
            "written_by": __version__}
    return signed_json.sign(body, PREFIX, signer)


def decode_manifest(data: bytes, *, owner: str, run_hash: str | None = None) -> SignedManifest:
    """A manifest ``owner`` signed (and whose hash is ``run_hash``, when given); InvalidMessage /
    SignatureError otherwise, and ConfigError for a manifest this release cannot run."""
    if len(data) > MAX_BYTES:
        raise InvalidMessage(f"run manifest is {len(data):,} bytes; at most {MAX_BYTES:,}")
    try:
        body = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidMessage("run manifest is not JSON") from None
    if not isinstance(body, dict) or set(body) != _FIELDS or body["v"] != 1:
        raise InvalidMessage("run manifest envelope has the wrong fields or version")
    if not all(isinstance(body[k], str) for k in ("hotkey", "run_hash", "written_by")):
        raise InvalidMessage("run manifest envelope fields hotkey, run_hash and written_by must be strings")
    signed_json.verify(body, PREFIX, {owner}, "run manifest")
    document = body["manifest"]
    found = manifest_hash(document) if isinstance(document, dict) else None
    if found != body["run_hash"] or (run_hash is not None and found != run_hash):
        raise InvalidMessage(f"run manifest hashes to {found}, not to the run hash "
                             f"{run_hash or body['run_hash']} it was published under")
    check_manifest(document)
    return SignedManifest(document, found, owner, body["written_by"], bytes(data))


def manifest_card(card: BucketCard, run_hash: str) -> BucketCard:
    """The owner's bucket card, naming the run it publishes in its note."""
    return replace(card, note=f"{NOTE}{run_hash}")


def is_manifest_card(data: bytes) -> bool:
    """Whether a commitment is the subnet owner's card naming a run manifest (not a peer's)."""
    try:
        return BucketCard.decode(data).note.startswith(NOTE)
    except InvalidCommitment:
        return False


def publish_manifest(document: dict, signer: Identity, store: ObjectStore, card: BucketCard, chain: Chain) -> str:
    """Store the signed manifest in the owner's bucket, then commit its hash on chain; returns the run hash."""
    data = encode_manifest(document, signer)
    run_hash = manifest_hash(document)
    store.put(keys.manifest(run_hash), data)
    chain.commit(signer, manifest_card(card, run_hash).encode())
    return run_hash


def committed_run(chain: Chain) -> tuple[str, BucketCard, str]:
    """(the subnet owner's hotkey, its bucket card, the run hash it committed); ConfigError when the
    owner has committed no manifest."""
    owner = chain.owner_hotkey()
    commitment = chain.commitments().get(owner)
    where = f"the subnet owner ({owner}) on {chain.url}"
    if commitment is None:
        raise ConfigError(f"{where} has published no run manifest yet: wait for it, or start a network of your own "
                          f"with --manifest none (the run is then defined by --config/--set)")
    try:
        card = BucketCard.decode(commitment.data)
    except InvalidCommitment as exc:
        raise ConfigError(f"{where} committed something that is not a bucket card: {exc}") from None
    run_hash = card.note.removeprefix(NOTE)
    if not card.note.startswith(NOTE) or len(run_hash) != 32 or any(c not in "0123456789abcdef" for c in run_hash):
        raise ConfigError(f"{where} committed a bucket card that names no run manifest (its note is {card.note!r})")
    return owner, card, run_hash


def _cached(path: Path, owner: str, run_hash: str) -> SignedManifest | None:
    try:
        return decode_manifest(path.read_bytes(), owner=owner, run_hash=run_hash)
    except FileNotFoundError:
        return None
    except (OSError, InvalidMessage) as exc:
        log.warning("ignoring the cached run manifest %s: %s", path, exc)
        return None


def fetch_manifest(chain: Chain, cache: Path | None, *, allow_local_cards: bool = False) -> SignedManifest:
    """The run manifest the subnet owner committed: the cached copy at ``cache`` when it is that one,
    else read from the owner's bucket, verified, and cached (``cache`` None: read, never written)."""
    owner, card, run_hash = committed_run(chain)
    found = _cached(cache, owner, run_hash) if cache is not None else None
    if found is not None:
        return found
    try:
        store = store_from_card(card, allow_local=allow_local_cards)
        data = store.get(keys.manifest(run_hash), max_bytes=MAX_BYTES)
    except (InvalidCommitment, StorageError) as exc:
        raise ConfigError(f"cannot read run manifest {run_hash} from the subnet owner's bucket {card.store_url()}: "
                          f"{exc}") from None
    try:
        found = decode_manifest(data, owner=owner, run_hash=run_hash)
    except InvalidMessage as exc:
        raise ConfigError(f"the run manifest in the subnet owner's bucket is not valid: {exc}") from None
    if cache is not None:
        save_manifest(found, cache)
    log.info("joined run %s (manifest written by gauntlet %s, owner %s)", run_hash, found.written_by, owner)
    return found


def save_manifest(manifest: SignedManifest, path: Path) -> None:
    """Write the signed envelope to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(manifest.data)
    os.replace(tmp, path)


def read_saved_manifest(path: Path) -> SignedManifest:
    """The manifest a node's rank 0 joined (for its other ranks, which have no chain): checked as read."""
    try:
        data = path.read_bytes()
        owner = json.loads(data)["hotkey"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: the run manifest rank 0 joined cannot be read: {exc}") from None
    try:
        return decode_manifest(data, owner=owner)
    except InvalidMessage as exc:
        raise ConfigError(f"{path}: {exc}") from None
