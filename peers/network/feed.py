"""What the validators publish for the others — a peer list for each window, the replay list of the
messages each window applied, and their checkpoints — read from their buckets and checked
(signature, run, window, shapes) before anything is used. Nodes follow the highest-stake validator and fail over, window by window,
to the next one by stake when its list does not come in time."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from gauntlet.errors import InvalidMessage, ObjectNotFound, SignatureError, StorageError
from gauntlet.storage import ObjectStore, keys
from peers.network.artefacts import ArtefactTensors, open_artefact
from peers.network.directory import Directory
from peers.network.peer_list import MAX_BYTES as PEER_LIST_MAX_BYTES
from peers.network.peer_list import LOOKBACK, ListChoice, PeerList, choose_list, decode_peer_list
from peers.network.replay import MAX_BYTES as REPLAY_MAX_BYTES
from peers.network.records import verify_chain
from peers.network.replay import ReplayList, decode_replay

log = logging.getLogger("gauntlet.node")
Source = tuple[str, ObjectStore]  # a validator's hotkey and its store
RECORD_MAX_BYTES = 16 << 20  # a window record: about 0.35 kB per peer


class ValidatorFeed:
    def __init__(self, directory: Directory, *, run: str, run_hash: str, spec: Mapping[str, tuple[int, ...]],
                 max_bytes: int, list_deadline: Callable[[int], float], trusted: str | None = None) -> None:
        self.directory, self.run, self.run_hash, self.spec = directory, run, run_hash, spec
        self.max_bytes = max_bytes  # an artefact's size limit
        self.list_deadline = list_deadline  # window -> the store time by which its peer list must exist
        self.trusted = trusted  # follow this validator only (default: the highest stake)

    def source(self) -> Source | None:
        """The validator tried first: the highest-stake permit holder with a card (or ``trusted``)."""
        return self.directory.validator(self.trusted)

    def sources(self) -> list[Source]:
        """Every validator a node may follow, in the order tried (highest stake first)."""
        return self.directory.validators(self.trusted)

    def artefact(self, source: Source, kind: str, key: str, window: int | None, path: Path) -> ArtefactTensors:
        """A signed checkpoint from ``source``, downloaded to the local file ``path`` and checked; its
        tensors are read from that file one at a time (see :func:`~peers.network.artefacts.open_artefact`)."""
        hotkey, store = source
        store.get_file(key, path, max_bytes=self.max_bytes)
        return open_artefact(path, kind=kind, run=self.run_hash, window=window, trusted={hotkey}, spec=self.spec)[1]

    def peer_list(self, window: int, source: Source | None = None) -> PeerList | None:
        """The followed validator's (or ``source``'s) list for ``window`` if it was stored by the list
        deadline (see :meth:`peers.node.clock.WindowClock.list_deadline`); None when it is missing,
        late or unusable. Raises StorageError when the store cannot be read (the caller cannot know
        whether a list exists)."""
        source = source or self.source()
        if source is None:
            return None
        try:
            data, info = source[1].read(keys.peer_list(self.run, window), max_bytes=PEER_LIST_MAX_BYTES)
            listed = decode_peer_list(data, run=self.run_hash, window=window, trusted={source[0]})
        except ObjectNotFound:
            return None
        except InvalidMessage as exc:
            log.warning("window %d: unusable peer list from %s: %s", window, source[0][:12], exc)
            return None
        if info.last_modified > self.list_deadline(window):
            log.info("window %d: the validator's peer list came %.1f s late", window,
                     info.last_modified - self.list_deadline(window))
            return None
        return listed

    def choose_list(self, window: int, source: Source | None = None) -> ListChoice:
        """The list that governs ``window`` (:func:`peers.network.peer_list.choose_list`), looking at
        the validators in stake order (or at ``source`` alone): for each window looked at, the first
        validator whose list for it was stored in time. So the leader's list governs while it comes in
        time, the next validator's when it does not, and only when none came in time an earlier list.
        A network without a validator has no list: every valid message counts. Raises StorageError
        like :meth:`peer_list`."""
        sources = [source] if source is not None else self.sources()
        if not sources:
            return ListChoice(window, None, None, False)
        signer: dict[int, str] = {}

        def in_time(v: int) -> PeerList | None:
            for src in sources:
                found = self.peer_list(v, src)
                if found is not None:
                    signer[v] = src[0]
                    return found
            return None

        found = choose_list(window, in_time)
        choice = replace(found, leader=sources[0][0], validator=signer.get(found.list_window))
        if choice.failover:
            log.info("window %d: following validator %s (the leader %s published no list in time)", window,
                     choice.validator[:12], choice.leader[:12])
        if choice.rule == "fallback":
            log.info("window %d: following the list of window %d, the most recent in time", window,
                     choice.list_window)
        elif choice.rule == "none":
            log.warning("window %d: no validator has published a peer list in time for %d windows; nobody's "
                        "message is applied until one does", window, LOOKBACK)
        return choice

    def replay(self, window: int) -> ReplayList | None:
        """Which messages a validator applied for ``window``: the first usable replay list in stake
        order (every validator applies the same list's aggregate; None: none usable yet)."""
        for hotkey, store in self.sources():
            try:
                data = store.get(keys.replay(self.run, window), max_bytes=REPLAY_MAX_BYTES)
                return decode_replay(data, run=self.run_hash, window=window, trusted={hotkey})
            except ObjectNotFound:
                continue
            except (StorageError, InvalidMessage) as exc:
                log.warning("window %d: unusable replay list from validator %s: %s", window, hotkey[:12], exc)
        return None

    def record(self, window: int) -> dict | None:
        """The window record of the first validator in stake order that has a usable one (None: none)."""
        for hotkey, store in self.sources():
            try:
                data = store.get(keys.record(self.run, window), max_bytes=RECORD_MAX_BYTES)
                verify_chain([data], {hotkey})
                record = json.loads(data)
            except ObjectNotFound:
                continue
            except (StorageError, InvalidMessage, SignatureError, ValueError) as exc:
                log.debug("window %d: unusable record from validator %s: %s", window, hotkey[:12], exc)
                continue
            if record.get("run") == self.run_hash and record.get("window") == window:
                return record
        return None

    def checkpoints(self, source: Source) -> list[int]:
        """The windows of the checkpoints ``source`` holds, oldest first (empty when unreadable)."""
        try:
            found = [keys.parse(o.key) for o in source[1].list(keys.run_prefix(self.run) + "checkpoints/")]
        except StorageError as exc:
            log.warning("cannot list checkpoints of validator %s: %s", source[0], exc)
            return []
        return sorted(p.window for p in found if p is not None and p.kind == "checkpoint")
