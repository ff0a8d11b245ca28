"""What every node (peer or validator) shares: the data and the model, the window clock, the other
nodes' buckets, the trusted validator's artefacts, and the gather."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gauntlet.chain import Chain
from gauntlet.config import GauntletConfig
from gauntlet.data import open_dataset
from gauntlet.errors import ChainError, InvalidCommitment, InvalidMessage, ObjectNotFound, StorageError
from gauntlet.identity import Identity
from gauntlet.models import build_model
from gauntlet.parallel.world import World
from gauntlet.storage import BucketCard, ObjectStore, keys, store_from_card
from gauntlet.uniqueness import assigned_indices
from peers.artefacts import decode_artefact
from peers.gather import GatherResult, gather
from peers.metrics import MetricsServer, NodeMetrics
from peers.peer_list import MAX_BYTES as PEER_LIST_MAX_BYTES
from peers.peer_list import PeerList, decode_peer_list, select

log = logging.getLogger("gauntlet.node")


@dataclass
class NodeOptions:
    run_dir: Path
    data_dir: Path
    card: BucketCard | None = None  # published through the chain commitment when given
    allow_local_cards: bool = False  # accept file:// and loopback cards (local networks only)
    stop_after_window: int | None = None
    trust_validator: str | None = None  # whose checkpoints/aggregates/lists to use (default: highest stake)
    durable: bool = True  # fsync state files (simulations in one process may skip it)
    message_cache: dict | None = None  # decoded messages shared by the nodes of one process (lockstep)
    world: World | None = None  # the ranks of a torchrun job (this process is rank 0); None: one process
    metrics_port: int | None = None  # serve /metrics and /healthz on this port (0: any free port)
    metrics_addr: str = "127.0.0.1"
    wandb_project: str | None = None  # also log window metrics to Weights & Biases
    retain: int = 0  # windows of this node's own published objects kept in its bucket; 0: all (peers/retention.py)


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "gauntlet" / "data"


class StopRequested(Exception):
    """Raised by a node's waits once :meth:`Node.request_stop` was called (SIGTERM, Ctrl-C): the run
    loop ends there. Every state file is written atomically, so stopping at any wait loses nothing
    that a restart does not redo."""


class Node:
    TRAINS = False  # whether the node's engine has an inner optimiser and error feedback (peers)
    ROLE = "node"  # "peer" or "validator": names its metrics

    def __init__(self, cfg: GauntletConfig, identity: Identity, chain: Chain, store: ObjectStore,
                 opts: NodeOptions) -> None:
        from peers.engine import ModelEngine

        self.cfg, self.identity, self.chain, self.store, self.opts = cfg, identity, chain, store, opts
        self.run, self.run_hash = cfg.run_name, cfg.run_hash()
        self.train_set, self.val_set = open_dataset(cfg.data, opts.data_dir)
        self.model = build_model(cfg.model, self.train_set.vocab_size, cfg.data.seq_len, seed=cfg.seed)
        # the weights, on this process or sharded over the ranks of a torchrun job (rank 0 drives)
        self.engine = ModelEngine(cfg, self.model, opts.world, train=self.TRAINS)
        self.params, self.spec = self.engine.params, self.engine.spec
        self.metrics = NodeMetrics(self.ROLE, identity.hotkey)
        self.metrics_server: MetricsServer | None = None
        self._sources: dict[bytes, ObjectStore] = {}
        self._stop_reason: str | None = None
        opts.run_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------ stopping

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the run loop to end at its next wait (safe from a signal handler)."""
        self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    def sleep(self, seconds: float) -> None:
        """Sleep, but raise :class:`StopRequested` within 0.2 s of a stop request."""
        deadline = time.monotonic() + seconds
        while True:
            if self._stop_reason is not None:
                raise StopRequested(self._stop_reason)
            self.engine.idle()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    # ------------------------------------------------------------------------------ time & data

    def window_start(self, window: int) -> float:
        return self.chain.timestamp(window * self.cfg.timing.blocks_per_window)

    def slot(self, window: int) -> tuple[float, float]:
        """When uploads for ``window`` count (server time)."""
        t, opening = self.cfg.timing, self.window_start(window + 1)
        return opening - t.slot_grace_s, opening + t.upload_slot_s + t.slot_grace_s

    GATHER_RETRIES = 2  # extra gathers when fetches fail for the infrastructure's fault
    RETRY_BACKOFF_S = 0.5  # before the first extra gather; doubles
    CHAIN_CHECK_S = 30.0  # during a long wait, how often the chain's clock is asked
    RETRY_S = 2.0  # pause before retrying after the chain or a store failed

    def start_metrics(self) -> None:
        """Serve /metrics and /healthz when asked (``metrics_port``), and tell the health check the
        chain's window clock."""
        self.metrics.set_clock(self.window_start(0), self.window_start(1) - self.window_start(0))
        if self.opts.wandb_project and self.metrics.sink is None:
            from peers.metrics import WandbSink

            self._wandb = WandbSink(self.opts.wandb_project, self.ROLE, self.identity.hotkey, self.opts.run_dir,
                                    {"run": self.run, "config": self.cfg.run_hash()})
            self.metrics.sink = self._wandb.log
        if self.opts.metrics_port is not None and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics, self.opts.metrics_port, self.opts.metrics_addr)
            log.info("metrics on http://%s:%d/metrics, health on /healthz", self.opts.metrics_addr,
                     self.metrics_server.port)

    def prune(self, newest: int, everything: bool = False) -> None:
        """Keep the last ``retain`` windows of what this node published (see peers/retention.py)."""
        from peers.retention import prune

        if newest >= 0 and self.opts.retain > 0:
            gone = prune(self.store, self.run, self.identity.hotkey, newest, self.opts.retain, everything)
            if gone:
                log.debug("pruned %d objects up to window %d", gone, newest - self.opts.retain)

    def stop_metrics(self) -> None:
        self.metrics.set_phase("stopped")
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if getattr(self, "_wandb", None) is not None:
            self._wandb.close()
            self._wandb, self.metrics.sink = None, None

    def wait_until(self, when: float) -> None:
        """Sleep until ``when`` on the network's clock. The local clock paces the wait and the chain
        has the last word: a local clock that jumped ahead cannot make the node act before the
        chain's latest block is within one block of ``when``, and one that fell behind cannot keep it
        waiting once the chain has passed ``when``. If the chain cannot be read, the local clock rules."""
        last_check, warned = -math.inf, False
        self.metrics.set_phase("waiting")
        while True:
            local = time.time()
            if local >= when or time.monotonic() - last_check >= self.CHAIN_CHECK_S:
                last_check = time.monotonic()
                try:
                    block = self.chain.block()
                    self.metrics.chain_window.set(block // self.cfg.timing.blocks_per_window)
                    chain_now = self.chain.timestamp(block)
                    step = chain_now - self.chain.timestamp(block - 1) if block > 0 else 0.0
                except ChainError as exc:
                    if local >= when:
                        log.warning("cannot read the chain's clock (%s); trusting the local clock", exc)
                        return
                    chain_now, step = -math.inf, 0.0
                if chain_now >= when or (local >= when and chain_now + step >= when):
                    return
                if local >= when:
                    if not warned:
                        log.warning("the local clock is ahead of the chain's by about %.0f s; waiting for the chain",
                                    local - chain_now - step)
                        warned = True
                    self.sleep(min(0.5, max(0.05, step / 4)))
                    continue
            self.sleep(min(0.5, max(0.0, when - local)))

    def wait_for_genesis(self) -> None:
        """Wait until the chain has started (a local chain may be created with a pending genesis,
        started once every node of a network is up). Real chains have long started."""
        if math.isfinite(self.chain.timestamp(0)) and self.chain.timestamp(0) <= time.time():
            return
        log.info("waiting for the chain to start")
        while not math.isfinite(when := self.chain.timestamp(0)):
            self.sleep(0.2)
        self.wait_until(when)

    def current_window(self) -> int:
        return self.chain.block() // self.cfg.timing.blocks_per_window

    def batches(self, indices: list[int]) -> list[torch.Tensor]:
        return list(self.train_set.batch(indices).split(self.cfg.train.batch_size))

    def assigned(self, window: int, hotkey: str) -> list[int]:
        return assigned_indices(self.cfg.seed, hotkey, window, self.cfg.samples_per_window, len(self.train_set))

    def random_batches(self, window: int, n: int, salt: str = "shared-random") -> list[torch.Tensor]:
        """Batches drawn alike by every node that knows ``salt`` (not assigned to anyone)."""
        idx = assigned_indices(self.cfg.seed, salt, window, n * self.cfg.train.batch_size, len(self.train_set))
        return self.batches(idx)

    # ----------------------------------------------------------------------------- the network

    def network(self) -> tuple[dict[str, ObjectStore], set[str], dict[str, int]]:
        """Each committed peer's store (validators excluded), the registered hotkeys, and their uids."""
        neurons = self.chain.metagraph()
        uids = {n.hotkey: n.uid for n in neurons}
        peers = {n.hotkey for n in neurons if not n.validator_permit}
        out: dict[str, ObjectStore] = {}
        for hotkey, commitment in self.chain.commitments().items():
            if hotkey not in peers:
                continue
            if hotkey == self.identity.hotkey:
                out[hotkey] = self.store
                continue
            store = self._sources.get(commitment.data)
            if store is None:
                try:
                    store = store_from_card(BucketCard.decode(commitment.data), allow_local=self.opts.allow_local_cards)
                except InvalidCommitment as exc:
                    log.warning("ignoring %s: unusable bucket card (%s)", hotkey, exc)
                    continue
                self._sources[commitment.data] = store
            out[hotkey] = store
        return out, set(uids), uids

    def publish_card(self) -> None:
        card = self.opts.card
        if card is None:
            return
        current = self.chain.commitments().get(self.identity.hotkey)
        if current is None or current.data != card.encode():
            self.chain.commit(self.identity, card.encode())
            log.info("published bucket card %r", card)

    def validator_store(self) -> tuple[str, ObjectStore] | None:
        """The trusted validator (``trust_validator``, else the highest-stake permit holder with a card)."""
        commitments = self.chain.commitments()
        ranked = sorted((n for n in self.chain.metagraph() if n.validator_permit and n.hotkey in commitments),
                        key=lambda n: -n.stake)
        if self.opts.trust_validator:
            ranked = [n for n in ranked if n.hotkey == self.opts.trust_validator]
        for neuron in ranked:
            if neuron.hotkey == self.identity.hotkey:
                return neuron.hotkey, self.store
            try:
                card = BucketCard.decode(commitments[neuron.hotkey].data)
                return neuron.hotkey, store_from_card(card, allow_local=self.opts.allow_local_cards)
            except InvalidCommitment as exc:
                log.warning("validator %s has an unusable bucket card: %s", neuron.hotkey, exc)
        return None

    def artefact(self, source: tuple[str, ObjectStore], kind: str, key: str, window: int | None):
        hotkey, store = source
        limit = 16 * self.cfg.timing.max_message_bytes
        data = store.get(key, max_bytes=limit)
        return decode_artefact(data, kind=kind, run=self.run_hash, window=window, trusted={hotkey}, spec=self.spec,
                               max_bytes=limit)

    def list_deadline(self, window: int) -> float:
        """A validator's peer list for ``window`` counts only if its object was written by then
        (store time): the boundary where the window's uploads start, plus the slot's grace. Every
        node — the validator included — compares the same stored time with the same chain time, so
        a list published late (a validator restarting, or too slow) is ignored by all alike."""
        return self.window_start(window + 1) + self.cfg.timing.slot_grace_s

    def peer_list(self, window: int) -> PeerList | None:
        """The trusted validator's list for ``window`` if it published one in time (see
        :meth:`list_deadline`). Raises StorageError when the validator's store cannot be read (the
        caller cannot know whether a list exists)."""
        source = self.validator_store()
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
            log.info("window %d: the validator's peer list came %.1f s late; every valid message counts", window,
                     info.last_modified - self.list_deadline(window))
            return None
        return listed

    def gather(self, window: int, in_slot: bool = True, listed: PeerList | None = None,
               use_list: bool = True, network: tuple | None = None, spool=None) -> GatherResult:
        """Every committed peer's message; restricted to the validator's list (top-G and reserves)
        when one is published for the window (``use_list``) or given (``listed``). ``network``: a
        :meth:`network` view the caller already read; ``spool``: keep messages on disk (see gather)."""
        sources, registered, _ = network or self.network()
        list_error = None
        if listed is None and use_list and in_slot:
            try:
                listed = self.peer_list(window)  # None: no list in time, every valid message counts
            except StorageError as exc:
                list_error = str(exc)
                log.warning("window %d: cannot read the validator's peer list: %s", window, exc)
        if listed is not None and not (listed.peers or listed.reserves):
            listed = None  # an empty list names nobody: everyone's message counts
        if listed is not None:
            sources = {h: s for h, s in sources.items() if h in set(listed.peers) | set(listed.reserves)}
        t = self.cfg.timing
        result = gather(window, sources, run=self.run, run_hash=self.run_hash, registered=registered,
                        spec=self.spec, codec=self.cfg.sparseloco, slot=self.slot(window) if in_slot else None,
                        max_bytes=t.max_message_bytes, timeout=t.gather_timeout_s, cache=self.opts.message_cache,
                        spool=spool)
        result.list_unreadable = list_error
        result.listed = None if listed is None else len(set(listed.peers) | set(listed.reserves))
        if listed is not None:
            keep = set(select(listed, result.messages, self.cfg.sparseloco.top_g))
            result.messages = {h: m for h, m in result.messages.items() if h in keep}
        return result

    def gather_retrying(self, window: int, **kwargs) -> GatherResult:
        """:meth:`gather`, again (up to ``GATHER_RETRIES`` times, with back-off) while fetches fail
        for the infrastructure's fault; messages already validated come from the cache."""
        self.metrics.set_phase("gathering")
        result = self.gather(window, **kwargs)
        for attempt in range(self.GATHER_RETRIES):
            if not (result.failed or result.list_unreadable):
                break
            self.sleep(self.RETRY_BACKOFF_S * 2**attempt)
            result = self.gather(window, **kwargs)
        self.metrics.gather_outcomes(result)
        return result
