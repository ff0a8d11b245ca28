"""Gathering the peers' messages for one window, concurrently, under the upload-slot rule.

A message counts for window ``w`` when the store's last-modified time *of the bytes read* lies in
the slot ``[start(w+1) − grace − resolution, start(w+1) + upload_slot + grace]``, where resolution is
how coarse the store's clock is (S3: 1 s). Every node reads after the slot
has closed, so every node that can reach the stores computes the same set — and so the same
weights. Each peer's outcome is classified by whose fault it is (see :mod:`peers.network.exchange`).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import InvalidMessage, ObjectNotFound, StorageError
from gauntlet.sparseloco.aggregate import value_norm
from gauntlet.sparseloco.wire import Message
from gauntlet.storage import ObjectStore
from peers.network.exchange import fetch_message_at
from peers.network.spool import Spool, SpooledMessage


@dataclass
class GatherResult:
    window: int
    messages: dict[str, Message | SpooledMessage] = field(default_factory=dict)  # in the slot and valid, by hotkey
    times: dict[str, float] = field(default_factory=dict)  # last-modified time of each valid message
    norms: dict[str, dict[str, float]] = field(default_factory=dict)  # value norm per tensor (gathered with norms)
    missing: list[str] = field(default_factory=list)  # uploaded nothing
    outside_slot: dict[str, float] = field(default_factory=dict)  # hotkey -> last-modified time
    invalid: dict[str, str] = field(default_factory=dict)  # the peer's fault
    failed: dict[str, str] = field(default_factory=dict)  # the infrastructure's fault
    list_unreadable: str | None = None  # the validator's peer list could not be read (infrastructure)
    listed: int | None = None  # peers named by the validator's list (top-G and reserves); None: no list used
    list_rule: str | None = None  # how the governing list was found (ListChoice.rule); None: no list read
    list_window: int | None = None  # the window of the governing list (None: none)
    list_in_time: bool = False  # the window's own list was stored in time
    list_validator: str | None = None  # whose list governs (hotkey; None: no list)
    list_failover: bool = False  # a validator other than the highest-stake one governs (its list was not in time)
    replayed: bool = False  # the messages the validator's replay list names were applied

    def ordered(self) -> list[tuple[str, Message | SpooledMessage]]:
        """Valid messages in canonical (hotkey) order: the order every node aggregates in."""
        return sorted(self.messages.items())


def gather(
    window: int,
    sources: Mapping[str, ObjectStore],
    *,
    run: str,
    run_hash: str,
    registered: Collection[str],
    spec: Mapping[str, tuple[int, ...] | torch.Size],
    codec: SparseLoCoConfig,
    slot: tuple[float, float] | None,
    max_bytes: int,
    timeout: float,
    workers: int = 8,
    cache: dict | None = None,
    spool: Spool | None = None,
    decode_workers: int = 2,
    norms: bool = False,
) -> GatherResult:
    """Fetch and validate ``window``'s message of every hotkey in ``sources`` (hotkey → its store).
    ``slot=None`` takes whatever is there now (for looking at others' updates before the slot).
    With ``spool``, each valid message's bytes go to local disk and only its header stays in memory
    (:class:`peers.network.spool.SpooledMessage`): memory no longer grows with the number of peers.
    With ``norms``, each valid message's value norm per tensor (what the validator's loss test needs)
    is taken while it is decoded anyway."""
    decoding = threading.BoundedSemaphore(max(1, decode_workers))  # downloads overlap; decodes (memory) are bounded

    def one(hotkey: str, store: ObjectStore) -> tuple[str, object]:
        return _fetch_one(hotkey, store, slot, spool, norms, run=run, window=window, registered=registered,
                          spec=spec, codec=codec, max_bytes=max_bytes, run_hash=run_hash, cache=cache,
                          decoding=decoding)

    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(workers, len(sources))), thread_name_prefix="gather")
    futures = {pool.submit(one, hk, store): hk for hk, store in sources.items()}
    done, pending = cf.wait(futures, timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    result = GatherResult(window)
    for future in done:
        _record(result, futures[future], *future.result())
    for future in pending:
        result.failed[futures[future]] = f"no answer within {timeout:.0f} s"
    result.missing.sort()
    return result


def _fetch_one(hotkey: str, store: ObjectStore, slot: tuple[float, float] | None, spool: Spool | None,
               norms: bool, **fetch) -> tuple[str, object]:
    """One peer's outcome: ("ok", (message, time, {tensor: value norm} or {})), ("missing", None),
    ("outside", time), ("invalid", why) for the peer's fault or ("failed", why) for the
    infrastructure's."""
    try:
        message, info = fetch_message_at(store, hotkey=hotkey, **fetch)
    except ObjectNotFound:
        return "missing", None
    except InvalidMessage as exc:
        return "invalid", str(exc)
    except StorageError as exc:
        return "failed", str(exc)
    # a store whose clock is truncated (S3: whole seconds) may date an in-slot upload up to one
    # resolution step before the slot opened
    if slot is not None and not slot[0] - getattr(store, "time_resolution", 0.0) <= info.last_modified <= slot[1]:
        return "outside", info.last_modified
    measured = {n: float(value_norm(ct)) for n, ct in message.tensors.items()} if norms else {}
    if spool is not None:
        message = spool.put(message)
    return "ok", (message, info.last_modified, measured)


def _record(result: GatherResult, hotkey: str, kind: str, value) -> None:
    if kind == "ok":
        result.messages[hotkey], result.times[hotkey], result.norms[hotkey] = value
    elif kind == "missing":
        result.missing.append(hotkey)
    elif kind == "outside":
        result.outside_slot[hotkey] = value
    elif kind == "invalid":
        result.invalid[hotkey] = value
    else:
        result.failed[hotkey] = value
