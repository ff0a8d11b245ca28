"""Node processes for the live tests: launch them, read what they record, wait for events (never for a
fixed time), and stop them the way a service manager does (SIGTERM: they finish cleanly, exit 0).

Live tests run on wall-clock windows, so a busy machine changes *when* things happen. The tests
therefore create the chain with a pending genesis and start it once every node is up, run the nodes
with no fixed last window, wait for what the scenario needs (with a deadline that fails the test
with the nodes' logs), and then stop them."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gauntlet.chain.local import LocalChain
from gauntlet.identity import Identity

ROOT = Path(__file__).resolve().parents[1]
SAFETY_WINDOWS = 200  # --until-window bound: the nodes never outlive a broken test by much


def pending_chain(path: Path, hotkeys: Iterable[str], block_time: float, validators: Iterable[str] = ()
                  ) -> tuple[str, LocalChain]:
    """A local chain whose clock starts only when :func:`start_when_ready` says so; registers the keys."""
    chain = LocalChain(path, block_time=block_time, genesis=math.inf)
    for hotkey in hotkeys:
        chain.register(hotkey)
    for hotkey in validators:
        chain.register(hotkey, stake=1000.0, validator_permit=True)
    return f"local://{path}?block_time={block_time}", chain


class Nodes:
    """The node processes of one test, by name, with their logs and run directories under ``root``."""

    def __init__(self, root: Path, data_dir: Path, chain_url: str, settings: list[str]) -> None:
        self.root, self.data_dir, self.chain_url, self.settings = root, data_dir, chain_url, settings
        self.procs: dict[str, subprocess.Popen] = {}

    def run_dir(self, name: str) -> Path:
        return self.root / f"run-{name}"

    def log(self, name: str) -> str:
        path = self.root / f"log-{name}.txt"
        return path.read_text(errors="replace") if path.exists() else ""

    def launch(self, name: str, role: str = "peer", storage: str | None = None, extra: Iterable[str] = ()) -> None:
        cmd = [sys.executable, "-m", "peers.cli", "validate" if role == "validator" else "peer",
               "--identity-seed", name, "--chain", self.chain_url, "--storage",
               storage or f"file://{self.root}/store-{name}", "--allow-local-cards", "--run-dir",
               str(self.run_dir(name)), "--data-dir", str(self.data_dir), "--until-window", str(SAFETY_WINDOWS),
               *extra]
        for s in self.settings:
            cmd += ["--set", s]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        with open(self.root / f"log-{name}.txt", "ab") as log:  # own session: a kill reaches all its ranks
            self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL of the node and every process it started (a crash, of all its ranks at once); it no
        longer counts as running until it is launched again."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None and proc.returncode != 0:
                raise AssertionError(f"node {name} died (exit {proc.returncode}):\n{self.log(name)[-3000:]}")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 180.0) -> None:
        """Poll ``condition`` until it holds; fail with every node's log tail after ``timeout`` s or
        as soon as a node dies."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.check_alive()
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {n}\n{self.log(n)[-1500:]}" for n in self.procs)
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tails}")
            time.sleep(0.1)

    def start_when_ready(self, chain: LocalChain, names: Iterable[str], timeout: float = 180.0) -> None:
        """Start the chain once every named node has committed its bucket card (it is up)."""
        hotkeys = {Identity.from_seed(n).hotkey for n in names}
        self.wait_for(lambda: hotkeys <= set(chain.commitments()), "the nodes to boot", timeout)
        chain.start()

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM every node still running; each must stop cleanly (exit status 0)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            assert proc.returncode == 0, f"node {name} did not stop cleanly ({proc.returncode}):\n" \
                                         f"{self.log(name)[-3000:]}"

    def close(self) -> None:
        """Kill whatever still runs (after a failure)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def metrics(run_dir: Path) -> list[dict]:
    """The node's metrics lines (a line being written at this instant is left out)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # only the last line can be incomplete
    return out


def windows(run_dir: Path) -> dict[int, dict]:
    """Window lines by window (the latest line of a window wins)."""
    return {m["window"]: m for m in metrics(run_dir) if "event" not in m}


def last_window(run_dir: Path) -> int:
    return max(windows(run_dir), default=-1)


def validator_records(store_root: Path) -> list[int]:
    """Windows the validator has published a record for."""
    return sorted(int(p.parent.name) for p in store_root.glob("runs/*/windows/*/record.json"))
