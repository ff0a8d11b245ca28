"""Publishing and fetching peer messages through object stores, checked against the chain.

The distinction between whose fault a failure is matters to scoring: :class:`InvalidMessage` means
the *peer* published something unacceptable (bad bytes, wrong window, signed by someone else, too
large, not registered); :class:`~gauntlet.errors.ObjectNotFound` means it published nothing; any
other :class:`~gauntlet.errors.StorageError` is the infrastructure's fault and must not be held
against the peer.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Collection, Mapping

import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import InvalidMessage, ObjectTooLarge
from gauntlet.sparseloco.wire import Message, decode_message
from gauntlet.storage import ObjectInfo, ObjectStore, keys


def fetch_message_at(
    store: ObjectStore,
    *,
    run: str,
    window: int,
    hotkey: str,
    registered: Collection[str],
    spec: Mapping[str, tuple[int, ...] | torch.Size],
    codec: SparseLoCoConfig,
    max_bytes: int,
    run_hash: str | None = None,
    cache: dict | None = None,
    decoding=None,
) -> tuple[Message, ObjectInfo]:
    """:func:`fetch_message`, plus the store's metadata (last-modified time) of the bytes decoded.
    ``run`` names the run in object keys; ``run_hash`` (default: ``run``) is what headers carry.
    ``cache`` (shared by the nodes of one process) maps (sha256 of the bytes, expectations) to the
    decoded message, so identical bytes are validated once. ``decoding`` (a semaphore shared by concurrent
    fetches) bounds how many messages are being decoded at once, and so the memory that takes."""
    if hotkey not in registered:
        raise InvalidMessage(f"hotkey {hotkey} is not registered on the subnet")
    try:
        data, info = store.read(keys.message(run, window, hotkey), max_bytes=max_bytes)
    except ObjectTooLarge as exc:
        raise InvalidMessage(f"message of {hotkey} is too large: {exc}") from exc
    key = (hashlib.sha256(data).digest(), hotkey, window, run_hash or run) if cache is not None else None
    if key is not None and key in cache:
        return cache[key], info
    with decoding if decoding is not None else contextlib.nullcontext():
        message = decode_message(data, spec=spec, expected_window=window, expected_run=run_hash or run,
                                 expected_hotkey=hotkey, expected_codec=codec, max_bytes=max_bytes)
    if key is not None:
        if len(cache) > 4096:
            cache.clear()
        cache[key] = message
    return message, info


def fetch_message(store: ObjectStore, **kwargs) -> Message:
    """Fetch and validate a peer's message for a window from the store its card points to.

    Takes the keyword arguments of :func:`fetch_message_at`. The message must be signed by
    ``hotkey`` (the owner of the bucket it came from), for this run and window, match the model
    ``spec`` and codec, and ``hotkey`` must be registered on chain. Replays of another window,
    messages copied from another peer's bucket and forgeries all raise :class:`InvalidMessage`.
    """
    return fetch_message_at(store, **kwargs)[0]
