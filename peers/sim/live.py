"""Live simulation: one OS process per node, wall-clock windows on an embedded local:// chain.

Every node is started with the same command a user would run (``gauntlet peer`` / ``gauntlet
validate``) and talks to the others only through the chain and the stores. The parent publishes the
run's manifest as the subnet owner would, and every node joins with ``--manifest chain``, its local
settings in a file. The chain is created with a pending genesis and started once every node has
committed its bucket card (which a node does when its data and model are loaded), so that window 0
opens when all are ready however loaded the machine is. The parent registers the throwaway hotkeys,
optionally runs a loopback S3 server (``--storage embedded-s3``), watches the processes — a node
that dies is reported, never waited for — and afterwards reads the validator's published window
records (weights as set on chain, the last ones at the final window) and the peers' metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from gauntlet.chain.local import LocalChain
from gauntlet.config import GauntletConfig, local_settings
from gauntlet.data import open_dataset
from gauntlet.data.identity import cached_identity
from gauntlet.errors import ConfigError, StorageError
from gauntlet.models import build_model
from gauntlet.storage import BucketCard, FileStore, keys, open_store
from peers.network.manifest import publish_manifest
from peers.node.data import default_data_dir
from peers.sim.scenario import Scenario, chain_tempo
from peers.sim.summary import SimRun, WindowView, note_entries, window_lines
from peers.validator_behaviours import Colluder, load_validator_behaviour

log = logging.getLogger("gauntlet.simulate")
ROOT = Path(__file__).resolve().parents[2]  # the repository (for PYTHONPATH of the nodes)
BLOCK_TIME = 1.0
READ_KEY, READ_SECRET = "simulation-reader", "simulation-reader-secret"
OWNER = "owner"  # the subnet owner's node name: it publishes the run manifest, and runs nothing


def store_urls(scenario: Scenario, names: list[str], s3_port: int | None) -> dict[str, str]:
    """Each node's bucket: on the embedded S3 server, under OUT as file stores, or the --storage pattern."""
    out = scenario.out.resolve()
    if s3_port is not None:
        return {n: f"s3://gauntlet-{n}?endpoint_url=http://127.0.0.1:{s3_port}&region=us-east-1" for n in names}
    if scenario.storage in (None, "file"):
        return {n: f"file://{out}/nodes/{n}/bucket" for n in names}
    if "{name}" not in scenario.storage:
        raise ConfigError("a --storage URL for a live simulation needs a {name} placeholder, one bucket per node, "
                          "e.g. 's3://sim-{name}?endpoint_url=http://127.0.0.1:9000'")
    return {n: scenario.storage.replace("{name}", n) for n in names}


def _command(role: str, name: str, scenario, cfg_file: Path, chain_url: str, store_url: str, data_dir: Path,
             spec: str) -> list[str]:
    """The command a user runs: the run's settings from the published manifest, local ones in ``cfg_file``."""
    out = scenario.out.resolve()
    cmd = [sys.executable, "-m", "peers.cli", "validate" if role == "validator" else "peer",
           "--identity-seed", f"simulate|{scenario.seed}|{name}", "--manifest", "chain", "--config", str(cfg_file),
           "--chain", chain_url,
           "--storage", store_url, "--allow-local-cards", "--run-dir", str(out / "nodes" / name / "state"),
           "--data-dir", str(data_dir), "--until-window", str(scenario.windows - 1),
           "--storage.read-access-key", READ_KEY, "--storage.read-secret-key", READ_SECRET, "--behaviour", spec]
    if role == "validator" and isinstance(load_validator_behaviour(spec), Colluder) and scenario.colluder_target():
        cmd += ["--collude-with", scenario.colluder_target()]
    return cmd


def run_live(scenario: Scenario, progress) -> SimRun:
    """Run a scenario with one OS process per node; the same results as :func:`run_lockstep`, and the
    nodes that could not keep up with the windows."""
    if scenario.storage == "embedded-s3":
        import moto.server  # noqa: F401  (before anything is written: the [sim] extra may be missing)
    cfg: GauntletConfig = scenario.config_for()
    out = scenario.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = (scenario.data_dir or default_data_dir()).resolve()
    progress.phase("preparing data")
    identity = cached_identity(*open_dataset(cfg.data, data_dir), data_dir)  # tokenised once here (text sources)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"sha256": identity})})  # pinned by the manifest
    (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1))
    cfg_file = out / "local.json"  # what each node sets for itself; the rest comes from the manifest
    cfg_file.write_text(json.dumps(local_settings(cfg), indent=1))
    chain_url = scenario.chain or f"local://{out}/chain.db?block_time={BLOCK_TIME}"
    if not chain_url.startswith("local://"):
        raise ConfigError("a live simulation registers throwaway keys, so it needs a local:// chain")
    validators = {v.node: v for v in scenario.validator_specs()}
    nodes = {**{n: v.behaviour for n, v in validators.items()}, **scenario.nodes()}
    chain = LocalChain(chain_url.removeprefix("local://").split("?")[0], block_time=BLOCK_TIME, genesis=math.inf,
                       tempo=chain_tempo(cfg), commit_reveal=scenario.commit_reveal)
    for name in nodes:
        chain.register(scenario.identity(name).hotkey, stake=validators[name].stake if name in validators else 0.0,
                       validator_permit=name in validators)
    server, port = start_embedded_s3() if scenario.storage == "embedded-s3" else (None, None)
    urls = store_urls(scenario, [*nodes, OWNER], port)
    env = node_env(server is not None, urls)
    publish_run(cfg, scenario.identity(OWNER), chain, open_store(urls[OWNER]))
    crashed = _run_nodes(nodes, set(validators), scenario, progress, chain, cfg, env,
                         lambda role, name, spec: _command(role, name, scenario, cfg_file, chain_url, urls[name],
                                                           data_dir, spec))
    (out / "crashed.json").write_text(json.dumps(crashed))
    views = _views(scenario, cfg, urls, chain)
    if server is not None:
        server.stop()
    hotkeys = {n: scenario.identity(n).hotkey for n in scenario.nodes()}
    model = build_model(cfg.model, 256, cfg.data.seq_len, seed=cfg.seed)
    behind = cannot_keep_up(scenario)
    for slow in behind:
        log.warning("%s warned that it cannot keep up with the windows: %s", slow["node"], slow["what"])
    return SimRun(views, hotkeys, _mean_message_bytes(scenario), sum(p.numel() for p in model.parameters()), behind,
                  payouts=chain.payouts(), epochs=chain.epochs(), chain_weights=chain.weights(),
                  validators={v.name: scenario.identity(v.node).hotkey for v in scenario.validator_specs()})


def publish_run(cfg: GauntletConfig, owner, chain: LocalChain, store) -> None:
    """What a subnet owner does with `gauntlet run publish`: ``owner`` becomes the subnet's owner and
    publishes the run's manifest in ``store``, its hash committed on chain."""
    chain.register(owner.hotkey)
    chain.set_owner(owner.hotkey)
    if isinstance(store, FileStore):
        card = BucketCard("file", str(store.root))
    else:
        store.create_bucket()  # the owner's bucket, beside the nodes' (a no-op when it exists)
        card = BucketCard("s3", store.endpoint_url or "", store.bucket, store.region or "", READ_KEY, READ_SECRET)
    publish_manifest(cfg.manifest(), owner, store, card, chain)


def _lines(scenario: Scenario, name: str) -> dict[int, dict]:
    return window_lines(scenario.out.resolve() / "nodes" / name / "state" / "metrics.jsonl")


def cannot_keep_up(scenario: Scenario) -> list[dict]:
    """The nodes that warned that they cannot keep up with the windows (peers: training and applying
    a window need more than 80 % of one; the validator: evaluating a window takes more than 80 % of
    the time before its next peer list is due), from their logs: node, time, the warning."""
    found = []
    for name in [*(v.node for v in scenario.validator_specs()), *scenario.nodes()]:
        path = scenario.out.resolve() / "nodes" / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for line in (line for line in lines if "WARNING" in line and "cannot keep up" in line):
            found.append({"node": name, "at": line[:23], "what": line.split("cannot keep up with the windows:", 1)[-1]
                          .strip()})
    return found


def start_embedded_s3():
    """A loopback S3 server (moto) on a free port: (server, port)."""
    from moto.server import ThreadedMotoServer  # deferred: the [sim] extra, only for --storage embedded-s3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, port


def node_env(embedded_s3: bool, urls: dict[str, str]) -> dict[str, str]:
    """The nodes' environment: one torch thread each, this code on the path, the embedded S3's keys
    (whose buckets are created here)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)}
    if embedded_s3:
        env.update(AWS_ACCESS_KEY_ID="simulation", AWS_SECRET_ACCESS_KEY="simulation", AWS_DEFAULT_REGION="us-east-1")
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        for url in urls.values():
            open_store(url).create_bucket()
    return env


def _run_nodes(nodes: dict[str, str], validators: set[str], scenario: Scenario, progress, chain: LocalChain,
               cfg: GauntletConfig, env: dict[str, str], command) -> dict[str, int]:
    """Start every node (``validators``: the names of the validator nodes), start the chain when all
    are up, watch them to the end; the nodes that stopped early, with their exit status. Every
    process is ended on the way out."""
    procs: dict[str, subprocess.Popen] = {}
    logs = scenario.out.resolve() / "nodes"
    logs.mkdir(parents=True, exist_ok=True)
    # validators that evaluate nothing publish no bucket card: nobody waits for theirs
    silent = {n for n in validators if not load_validator_behaviour(nodes[n]).evaluates}
    try:
        for name, spec in nodes.items():
            role = "validator" if name in validators else "peer"
            procs[name] = subprocess.Popen(command(role, name, spec), cwd=os.getcwd(), env=env,
                                           stdout=open(logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
        crashed = _start_when_ready(procs, chain, scenario, progress, silent)
        crashed.update(_watch(procs, validators, chain, cfg, scenario, progress, crashed))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    for name, code in crashed.items():
        log.warning("node %s stopped early (exit status %s); see %s", name, code, logs / f"{name}.log")
    return crashed


def _mean_message_bytes(scenario: Scenario) -> float:
    """Mean size of the honest peers' uploaded messages, from their metrics lines."""
    sizes = []
    for name, spec in scenario.nodes().items():
        path = scenario.out.resolve() / "nodes" / name / "state" / "metrics.jsonl"
        if spec == "honest" and path.exists():
            sizes += [json.loads(line).get("bytes_sent", 0) for line in path.read_text().splitlines()
                      if json.loads(line).get("bytes_sent")]
    return sum(sizes) / len(sizes) if sizes else 0.0


BOOT_LIMIT_S = 300.0  # a node that has not committed its card by then is left behind (it catches up if it comes)


def _start_when_ready(procs, chain: LocalChain, scenario, progress, silent: set[str]) -> dict[str, int]:
    """Start the chain once every node but the ``silent`` ones has committed its card (or died, or
    BOOT_LIMIT_S passed)."""
    hotkeys = {name: scenario.identity(name).hotkey for name in procs if name not in silent}
    deadline, crashed = time.monotonic() + BOOT_LIMIT_S, {}
    while time.monotonic() < deadline:
        crashed.update({n: p.returncode for n, p in procs.items() if p.poll() not in (None, 0)})
        ready = set(chain.commitments()) & set(hotkeys.values())
        waiting = [n for n, h in hotkeys.items() if h not in ready and n not in crashed]
        if not waiting:
            break
        progress.phase(f"starting nodes: {len(procs) - len(waiting)}/{len(procs)} ready")
        time.sleep(0.2)
    else:
        log.warning("nodes still booting after %.0f s: %s; starting the chain without them", BOOT_LIMIT_S,
                    ", ".join(waiting))
    chain.start(time.time() + 1.0)
    return crashed


def _watch(procs, validators: set[str], chain: LocalChain, cfg, scenario, progress,
           crashed: dict[str, int]) -> dict[str, int]:
    """Wait for the validators to finish (the last window, or where their behaviour stops them);
    report nodes that die; bounded in time."""
    window_s = cfg.timing.blocks_per_window * BLOCK_TIME
    deadline = chain.genesis + 120 + (scenario.windows + 2) * window_s
    crashed = dict(crashed)
    while time.time() < deadline:
        for name, proc in procs.items():
            code = proc.poll()
            if code not in (None, 0) and name not in crashed:
                crashed[name] = code
        if all(procs[n].poll() is not None for n in validators):
            break
        progress.phase(f"{len(procs) - len(crashed)} nodes running",
                       window=chain.block() // cfg.timing.blocks_per_window)
        time.sleep(0.5)
    else:
        for name in (n for n in validators if procs[n].poll() is None):
            crashed.setdefault(name, -1)
        log.error("the validators did not finish within the time limit; stopping every node")
    grace = time.time() + 2 * window_s  # peers apply the last window after the validator
    while time.time() < grace and any(p.poll() is None for n, p in procs.items() if n not in crashed):
        time.sleep(0.5)
    for name, proc in procs.items():
        code = proc.poll()
        if code not in (None, 0):
            crashed.setdefault(name, code)
    return crashed


def _views(scenario: Scenario, cfg: GauntletConfig, urls: dict[str, str], chain: LocalChain) -> list[WindowView]:
    """Each window as the leader's signed records (the first validator by stake that published one
    for the window) and the honest peers' metrics tell it (the loss: honest-0's)."""
    vstores = [open_store(urls[v.node], read_only=True) for v in scenario.validator_specs()
               if load_validator_behaviour(v.behaviour).evaluates]
    names = {scenario.identity(n).hotkey: n for n in scenario.nodes()}
    uid = {n.hotkey: n.uid for n in chain.metagraph()}
    name_of_uid = {uid[h]: n for h, n in names.items()}
    honest = [n for n, spec in scenario.nodes().items() if spec == "honest"]
    lines = {n: _lines(scenario, n) for n in honest}
    losses = {w: m["val_loss"] for w, m in lines.get(honest[0], {}).items() if "val_loss" in m} if honest else {}
    views, weights, weights_window = [], {n: 0.0 for n in scenario.nodes()}, None
    for window in range(scenario.windows):
        record = _record(vstores, keys.record(cfg.run_name, window))
        if record is None:  # a window no validator reached
            continue
        if record.get("weights"):
            weights, weights_window = {n: 0.0 for n in scenario.nodes()}, window
            weights.update({name_of_uid[int(u)]: w for u, w in record["weights"].items() if int(u) in name_of_uid})
        peers = {names[h]: f for h, f in record["peers"].items() if h in names}
        view = WindowView(window, float(losses.get(window, float("nan"))), dict(weights), peers,
                          {"validator_s": record.get("durations", {}).get("total_s", 0.0)}, weights_window)
        note_entries(view, [lines[n][window] for n in honest if window in lines[n]], names)
        views.append(view)
    return views


def _record(stores, key: str) -> dict | None:
    """The first validator's (in stake order) window record ``key`` (None: nobody published it)."""
    for store in stores:
        try:
            return json.loads(store.get(key))
        except (StorageError, ValueError):
            continue
    return None
