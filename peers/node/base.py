"""What every node (peer or validator) is made of: its data and model engine, its clock, the
directory of the other nodes' buckets, the validator it follows, its metrics — and the gather of a
window's messages under the followed validator's list."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gauntlet.chain import Chain
from gauntlet.config import GauntletConfig
from gauntlet.errors import StorageError
from gauntlet.identity import Identity
from gauntlet.models import build_model
from gauntlet.parallel.world import World
from gauntlet.storage import BucketCard, ObjectStore
from peers.network.directory import Directory, NetworkView
from peers.network.feed import ValidatorFeed
from peers.network.gather import GatherResult, gather
from peers.network.peer_list import ListChoice, select
from peers.network.spool import Spool
from peers.node.clock import WindowClock
from peers.node.data import NodeData
from peers.node.engine import ModelEngine
from peers.ops.metrics import MetricsServer, NodeMetrics, WandbSink
from peers.ops.retention import prune

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
    retain: int = 0  # windows of this node's own published objects kept in its bucket; 0: all (peers/ops/retention.py)


class Node:
    TRAINS = False  # whether the node's engine has an inner optimiser and error feedback (peers)
    ROLE = "node"  # "peer" or "validator": names its metrics
    GATHER_RETRIES = 2  # extra gathers when fetches fail for the infrastructure's fault
    RETRY_BACKOFF_S = 0.5  # before the first extra gather; doubles
    RETRY_S = 2.0  # pause before retrying after the chain or a store failed

    def __init__(self, cfg: GauntletConfig, identity: Identity, chain: Chain, store: ObjectStore,
                 opts: NodeOptions) -> None:
        self.cfg, self.identity, self.chain, self.store, self.opts = cfg, identity, chain, store, opts
        self.run, self.run_hash = cfg.run_name, cfg.run_hash()
        self.data = NodeData(cfg, opts.data_dir)
        self.model = build_model(cfg.model, self.data.train_set.vocab_size, cfg.data.seq_len, seed=cfg.seed)
        # the weights, on this process or sharded over the ranks of a torchrun job (rank 0 drives)
        self.engine = ModelEngine(cfg, self.model, opts.world, train=self.TRAINS)
        self.spec = self.engine.spec
        self.metrics = NodeMetrics(self.ROLE, identity.hotkey)
        self.metrics_server: MetricsServer | None = None
        self.wandb: WandbSink | None = None
        self.clock = WindowClock(chain, cfg.timing, self.metrics, idle=self.engine.ranks.idle)
        self.directory = Directory(chain, identity, store, opts.allow_local_cards)
        self.feed = ValidatorFeed(self.directory, run=self.run, run_hash=self.run_hash, spec=self.spec,
                                  max_bytes=16 * cfg.timing.max_message_bytes, list_deadline=self.clock.list_deadline,
                                  trusted=opts.trust_validator)
        opts.run_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------ operations

    def start_metrics(self) -> None:
        """Serve /metrics and /healthz when asked (``metrics_port``), and tell the health check the
        chain's window clock."""
        self.metrics.set_clock(self.clock.window_start(0), self.clock.window_start(1) - self.clock.window_start(0))
        if self.opts.wandb_project and self.wandb is None:
            self.wandb = WandbSink(self.opts.wandb_project, self.ROLE, self.identity.hotkey, self.opts.run_dir,
                                   {"run": self.run, "config": self.run_hash})
            self.metrics.sink = self.wandb.log
        if self.opts.metrics_port is not None and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics, self.opts.metrics_port, self.opts.metrics_addr)
            log.info("metrics on http://%s:%d/metrics, health on /healthz", self.opts.metrics_addr,
                     self.metrics_server.port)

    def stop_metrics(self) -> None:
        self.metrics.set_phase("stopped")
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.wandb is not None:
            self.wandb.close()
            self.wandb, self.metrics.sink = None, None

    def prune(self, newest: int, everything: bool = False) -> None:
        """Keep the last ``retain`` windows of what this node published (see peers/ops/retention.py)."""
        if newest >= 0 and self.opts.retain > 0:
            gone = prune(self.store, self.run, self.identity.hotkey, newest, self.opts.retain, everything)
            if gone:
                log.debug("pruned %d objects up to window %d", gone, newest - self.opts.retain)

    # ------------------------------------------------------------------------------ the gather

    def gather(self, window: int, in_slot: bool = True, use_list: bool = True, network: NetworkView | None = None,
               spool: Spool | None = None, norms: bool = False) -> GatherResult:
        """Every committed peer's message; restricted to the list that governs the window (see
        :meth:`ValidatorFeed.choose_list`) when ``use_list``. ``network``: a view the caller already
        read; ``spool``: keep messages on disk; ``norms``: take each message's norms (see gather)."""
        network = network or self.directory.view()
        choice, list_error = None, None
        if use_list and in_slot:
            try:
                choice = self.feed.choose_list(window)
            except StorageError as exc:
                list_error = str(exc)
                log.warning("window %d: cannot read the validator's peer list: %s", window, exc)
        result = self._gather_listed(window, choice, network, in_slot=in_slot, spool=spool, norms=norms)
        result.list_unreadable = list_error
        return result

    def _gather_listed(self, window: int, choice: ListChoice | None, network: NetworkView, in_slot: bool,
                       spool: Spool | None, norms: bool = False) -> GatherResult:
        """:meth:`gather` with the governing list already chosen (None: every valid message)."""
        listed = None if choice is None else choice.followed
        named = None if listed is None else set(listed.peers) | set(listed.reserves)
        sources = network.stores if named is None else {h: s for h, s in network.stores.items() if h in named}
        t = self.cfg.timing
        result = gather(window, sources, run=self.run, run_hash=self.run_hash, registered=network.registered,
                        spec=self.spec, codec=self.cfg.sparseloco, slot=self.clock.slot(window) if in_slot else None,
                        max_bytes=t.max_message_bytes, timeout=t.gather_timeout_s, cache=self.opts.message_cache,
                        spool=spool, norms=norms)
        if choice is not None:
            result.list_rule, result.list_window, result.list_in_time = choice.rule, choice.list_window, choice.in_time
            result.list_validator, result.list_failover = choice.validator, choice.failover
        if listed is not None:
            result.listed = len(named)
            keep = set(select(listed, result.messages, self.cfg.sparseloco.top_g))
            result.messages = {h: m for h, m in result.messages.items() if h in keep}
        return result

    def read_messages(self, window: int, hotkeys: list[str], network: NetworkView | None = None) -> GatherResult:
        """``window``'s messages of ``hotkeys`` as they are now (no slot, no list: a validator already
        judged them), validated. ``network``: a view the caller already read."""
        network, t = network or self.directory.view(), self.cfg.timing
        sources = {h: s for h, s in network.stores.items() if h in set(hotkeys)}
        return gather(window, sources, run=self.run, run_hash=self.run_hash, registered=network.registered,
                      spec=self.spec, codec=self.cfg.sparseloco, slot=None, max_bytes=t.max_message_bytes,
                      timeout=t.gather_timeout_s, cache=self.opts.message_cache)

    def gather_retrying(self, window: int, **kwargs) -> GatherResult:
        """:meth:`gather`, again (up to ``GATHER_RETRIES`` times, with back-off) while fetches fail
        for the infrastructure's fault; messages already validated come from the cache."""
        self.metrics.set_phase("gathering")
        result = self.gather(window, **kwargs)
        for attempt in range(self.GATHER_RETRIES):
            if not (result.failed or result.list_unreadable):
                break
            self.clock.sleep(self.RETRY_BACKOFF_S * 2**attempt)
            result = self.gather(window, **kwargs)
        self.metrics.gather_outcomes(result)
        return result
