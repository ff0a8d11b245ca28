"""Live metrics (Prometheus text format) and a health endpoint for a running node.

``--metrics.port P`` serves, on loopback unless ``--metrics.addr`` says otherwise:

- ``/metrics``: the node's gauges and counters (see docs/operations.md for what each means);
- ``/healthz``: ``200 ok`` while the node keeps up with the chain, ``503`` with the reason once it is a
  window or more behind what a healthy node has finished by now.

The node only sets in-memory values (a few assignments per window, no I/O); the HTTP server runs in
its own daemon thread and reads them. The registry belongs to the node (no process-global state).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

PHASES = ("starting", "waiting", "training", "uploading", "gathering", "evaluating", "applying", "saving", "stopped")


class NodeMetrics:
    """Every metric a peer or validator exposes, in its own registry."""

    def __init__(self, role: str, hotkey: str) -> None:
        self.role, self.hotkey = role, hotkey
        self.registry = r = CollectorRegistry()
        self.window = Gauge("gauntlet_window", "Last window this node finished", registry=r)
        self.chain_window = Gauge("gauntlet_chain_window", "The chain's current window (as of the last wait)",
                                  registry=r)
        self.phase = Gauge("gauntlet_phase", "1 for the phase the node is in", ["phase"], registry=r)
        self.val_loss = Gauge("gauntlet_validation_loss", "Validation loss after the last window", registry=r)
        self.upload_bytes = Gauge("gauntlet_upload_bytes", "Bytes of the last uploaded message", registry=r)
        self.upload_seconds = Gauge("gauntlet_upload_seconds", "Seconds the last upload took", registry=r)
        self.uploads = Counter("gauntlet_uploads", "Messages uploaded", registry=r)
        self.gathered = Counter("gauntlet_gather", "Peers' messages gathered, by outcome", ["outcome"], registry=r)
        self.outer_seconds = Gauge("gauntlet_outer_step_seconds", "Seconds of the last outer step", registry=r)
        self.save_seconds = Gauge("gauntlet_state_save_seconds", "Seconds the last state save took", registry=r)
        self.state_bytes = Gauge("gauntlet_state_bytes", "Bytes of node state on disk (all kept windows)",
                                 registry=r)
        self.bucket_window_bytes = Gauge("gauntlet_bucket_window_bytes", "Bytes this node wrote to its bucket in "
                                         "the last window (× --retain windows are kept)", registry=r)
        self.window_seconds = Gauge("gauntlet_window_seconds", "Seconds the last window's work took", registry=r)
        self.final = Gauge("gauntlet_peer_final_score", "Final score of each peer (validator)", ["hotkey"],
                           registry=r)
        self.weight = Gauge("gauntlet_peer_weight", "Weight last set for each peer (validator)", ["hotkey"],
                            registry=r)
        self.own_score = Gauge("gauntlet_own_final_score", "This peer's final score in the followed validator's "
                               "latest window record (peer)", registry=r)
        self.incentive = Gauge("gauntlet_incentive", "This node's incentive at the chain's last epoch: its share "
                               "of the miners' emission, 0..1", registry=r)
        self.emission = Gauge("gauntlet_emission", "Paid to this node at the chain's last epoch (the chain's "
                              "smallest unit)", registry=r)
        self.standing: set[str] = set()  # which of a peer's own score, incentive, emission have been read
        self.set_phase("starting")
        self.done = -1  # the last finished window
        self.sink: Callable[[int, dict[str, float]], None] | None = None  # e.g. WandbSink.log
        self._clock: tuple[float, float] | None = None  # (start of window 0, window length) on the chain

    # ---------------------------------------------------------------------------- updates (cheap)

    SCALARS = ("gauntlet_validation_loss", "gauntlet_upload_bytes", "gauntlet_upload_seconds",
               "gauntlet_outer_step_seconds", "gauntlet_state_save_seconds", "gauntlet_state_bytes",
               "gauntlet_window_seconds", "gauntlet_chain_window", "gauntlet_bucket_window_bytes")


    def finished(self, window: int, seconds: float | None = None) -> None:
        """A window is done: the health check and any sink (Weights & Biases) see it."""
        self.done = window
        self.window.set(window)
        if seconds is not None:
            self.window_seconds.set(seconds)
        if self.sink is not None and window >= 0:
            self.sink(window, self.scalars())

    def scalars(self) -> dict[str, float]:
        """The current value of every single-valued metric (name without the prefix)."""
        out = {}
        for name in self.SCALARS + tuple(sorted(self.standing)):
            value = self.registry.get_sample_value(name)
            if value is not None:
                out[name.removeprefix("gauntlet_")] = value
        return out

    def set_standing(self, **values: float) -> None:
        """A peer's own score, incentive or emission (keyword: own_final_score, incentive, emission),
        once read; reported to sinks from then on."""
        gauges = {"own_final_score": self.own_score, "incentive": self.incentive, "emission": self.emission}
        for name, value in values.items():
            gauges[name].set(value)
            self.standing.add(f"gauntlet_{name}")

    def set_phase(self, phase: str) -> None:
        for p in PHASES:
            self.phase.labels(p).set(1.0 if p == phase else 0.0)

    def set_clock(self, window0_start: float, window_seconds: float) -> None:
        """How to tell the chain's window from the time (read once from the chain at start)."""
        if math.isfinite(window0_start) and window_seconds > 0:
            self._clock = (window0_start, window_seconds)

    def gather_outcomes(self, result) -> None:
        self.gathered.labels("ok").inc(len(result.messages))
        self.gathered.labels("missing").inc(len(result.missing))
        self.gathered.labels("late").inc(len(result.outside_slot))
        self.gathered.labels("invalid").inc(len(result.invalid))
        self.gathered.labels("unreachable").inc(len(result.failed))

    def peer_scores(self, finals: Mapping[str, float], weights: Mapping[str, float] | None) -> None:
        for hotkey, value in finals.items():
            self.final.labels(hotkey).set(value)
        for hotkey, value in (weights or {}).items():
            self.weight.labels(hotkey).set(value)

    # ------------------------------------------------------------------------------------ health

    def health(self, now: float | None = None) -> tuple[bool, str]:
        """Whether the node keeps up: a healthy node has finished window ``c − 2`` while the chain is
        in window ``c`` (it works on ``c − 1`` after that window's upload slot)."""
        if self._clock is None:
            return True, "starting: the chain's clock is not known yet"
        t0, length = self._clock
        now = time.time() if now is None else now
        current = math.floor((now - t0) / length)
        done = self.done
        behind = (current - 2) - done
        if done < 0 and current < 2:
            return True, "ok: the first windows are under way"
        if behind >= 1:
            return False, f"{behind} window(s) behind: finished window {done} while the chain is in window {current}"
        return True, f"ok: finished window {done}, the chain is in window {current}"


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP, in a daemon thread."""

    def __init__(self, metrics: NodeMetrics, port: int, addr: str = "127.0.0.1") -> None:
        self.metrics = metrics
        handler = _handler(metrics.registry, metrics.health)
        self.httpd = ThreadingHTTPServer((addr, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(registry: CollectorRegistry, health: Callable[[], tuple[bool, str]]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, status, kind = generate_latest(registry), 200, CONTENT_TYPE_LATEST
            elif path == "/healthz":
                ok, why = health()
                body, status, kind = (why + "\n").encode(), 200 if ok else 503, "text/plain; charset=utf-8"
            else:
                body, status, kind = b"not found: try /metrics or /healthz\n", 404, "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # scrapes are not worth a log line
            return

    return Handler


class WandbSink:
    """Each finished window's metrics to a Weights & Biases run (``WANDB_MODE=offline`` keeps them in
    ``RUN_DIR/wandb`` for a later ``wandb sync``). ``wandb.log`` only queues: the window is not slowed."""

    def __init__(self, project: str, role: str, hotkey: str, run_dir, config: dict | None = None) -> None:
        import wandb  # deferred: the [wandb] extra, only with --wandb.project

        self.run = wandb.init(project=project, name=f"{role}-{hotkey[:8]}", dir=str(run_dir), config=config or {},
                              tags=[role])

    def log(self, window: int, values: dict[str, float]) -> None:
        self.run.log({"window": window, **values}, step=window)

    def close(self) -> None:
        self.run.finish()
