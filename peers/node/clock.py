"""A node's sense of time: the chain's windows, the upload slot, and waits that end promptly when the
node is asked to stop.

The chain's clock is the network's: window ``w`` starts at the timestamp of block
``w · blocks_per_window``. The local clock only paces the waits (see :meth:`WindowClock.wait_until`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from gauntlet.chain import Chain
from gauntlet.config import TimingConfig
from gauntlet.errors import ChainError
from peers.ops.metrics import NodeMetrics

log = logging.getLogger("gauntlet.node")


class StopRequested(Exception):
    """Raised by a node's waits once :meth:`WindowClock.request_stop` was called (SIGTERM, Ctrl-C): the
    run loop ends there. Every state file is written atomically, so stopping at any wait loses nothing
    that a restart does not redo."""


class WindowClock:
    CHAIN_CHECK_S = 30.0  # during a long wait, how often the chain's clock is asked

    def __init__(self, chain: Chain, timing: TimingConfig, metrics: NodeMetrics,
                 idle: Callable[[], None] = lambda: None) -> None:
        self.chain, self.timing, self.metrics = chain, timing, metrics
        self.idle = idle  # called while waiting (a sharded node's rank 0 keeps the other ranks awake)
        self.stop_reason: str | None = None

    # ------------------------------------------------------------------------------ stopping

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the run loop to end at its next wait (safe from a signal handler)."""
        self.stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None

    def sleep(self, seconds: float) -> None:
        """Sleep, but raise :class:`StopRequested` within 0.2 s of a stop request."""
        deadline = time.monotonic() + seconds
        while True:
            if self.stop_reason is not None:
                raise StopRequested(self.stop_reason)
            self.idle()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.2))

    # ------------------------------------------------------------------------------ windows

    def window_start(self, window: int) -> float:
        return self.chain.timestamp(window * self.timing.blocks_per_window)

    def current_window(self) -> int:
        return self.chain.block() // self.timing.blocks_per_window

    def slot(self, window: int) -> tuple[float, float]:
        """When uploads for ``window`` count (server time)."""
        opening = self.window_start(window + 1)
        return opening - self.timing.slot_grace_s, opening + self.timing.upload_slot_s + self.timing.slot_grace_s

    def list_deadline(self, window: int) -> float:
        """A validator's peer list for ``window`` counts only if its object was written by then
        (store time): the boundary where the window's uploads start, plus the slot's grace. Every
        node — the validator included — compares the same stored time with the same chain time, so
        a list published late (a validator restarting, or too slow) is ignored by all alike."""
        return self.window_start(window + 1) + self.timing.slot_grace_s

    # ------------------------------------------------------------------------------ waiting

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
                chain_now, step = self._chain_time(local >= when)
                if chain_now is None:  # unreadable, and the local clock says it is time
                    return
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

    def _chain_time(self, due: bool) -> tuple[float | None, float]:
        """(the chain's latest block time, one block's length); when the chain cannot be read, None if
        the wait is ``due`` by the local clock (which then rules), else minus infinity (keep waiting)."""
        try:
            block = self.chain.block()
            self.metrics.chain_window.set(block // self.timing.blocks_per_window)
            chain_now = self.chain.timestamp(block)
            return chain_now, (chain_now - self.chain.timestamp(block - 1) if block > 0 else 0.0)
        except ChainError as exc:
            if due:
                log.warning("cannot read the chain's clock (%s); trusting the local clock", exc)
                return None, 0.0
            return -math.inf, 0.0

    def wait_for_genesis(self) -> None:
        """Wait until the chain has started (a local chain may be created with a pending genesis,
        started once every node of a network is up). Real chains have long started."""
        if math.isfinite(self.chain.timestamp(0)) and self.chain.timestamp(0) <= time.time():
            return
        log.info("waiting for the chain to start")
        while not math.isfinite(when := self.chain.timestamp(0)):
            self.sleep(0.2)
        self.wait_until(when)
