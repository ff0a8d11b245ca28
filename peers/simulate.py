"""``gauntlet simulate``: a whole network on one machine (lockstep or live), then a summary and a report.

Lockstep (default) runs every node in this process on a virtual clock (:mod:`peers.lockstep`) and is
deterministic for a seed. Live (:mod:`peers.simulate_live`) runs one OS process per node on
wall-clock windows, talking only through the store and the chain. Both write the same run directory:
``summary.json`` (schema in DESIGN.md), ``metrics.jsonl`` (one line per window), ``report.md`` and
PNG plots (:mod:`peers.report`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from gauntlet.config import GauntletConfig, load_config
from gauntlet.identity import Identity

DEFAULT_ADVERSARIES = ["free-rider", "copier", "noisy-copier", "random-data", "noise", "sign-flip", "stale",
                       "late", "malformed"]
# Small, fast settings for a laptop CPU; --config / --set override them.
SIMULATION_DEFAULTS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2",
                       "inner.lr=3e-3", "train.eval_batches=1", "validator.checkpoint_every=5"]
LOCKSTEP_TIMING = ["timing.blocks_per_window=10", "timing.upload_slot_s=20"]  # 12-second blocks, virtual
LIVE_TIMING = ["timing.blocks_per_window=12", "timing.upload_slot_s=4", "timing.slot_grace_s=0.5",
               "timing.gather_timeout_s=8"]  # 1-second blocks: 12-second windows of wall time


@dataclass
class Scenario:
    honest: int = 5
    adversaries: list[str] = field(default_factory=lambda: list(DEFAULT_ADVERSARIES))
    windows: int = 20
    seed: int = 0
    model: str = "tiny"
    mode: str = "lockstep"
    out: Path = Path("runs/simulate")
    storage: str | None = None
    chain: str | None = None
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    data_dir: Path | None = None

    def nodes(self) -> dict[str, str]:
        """Peer name → behaviour spec, in a fixed order."""
        names = {f"honest-{i}": "honest" for i in range(self.honest)}
        for spec in self.adversaries:
            base = spec.rsplit(":", 1)[-1].lower() if ":" in spec else spec
            name, n = base, 2
            while name in names:
                name, n = f"{base}-{n}", n + 1
            names[name] = spec
        return names

    def identity(self, name: str) -> Identity:
        return Identity.from_seed(f"simulate|{self.seed}|{name}")

    def config_for(self) -> GauntletConfig:
        timing = LOCKSTEP_TIMING if self.mode == "lockstep" else LIVE_TIMING
        base = [*SIMULATION_DEFAULTS, *timing, f"seed={self.seed}", f"model.preset={self.model}"]
        return load_config(self.config, [*base, *self.overrides])


@dataclass
class WindowView:
    """What the report needs from one window."""

    window: int
    val_loss: float
    weights: dict[str, float]
    peers: dict[str, dict]  # name -> the validator's factors (status, ordinal, mu, sigma, ma, sync, ...)
    phase_s: dict[str, float] = field(default_factory=dict)
    weights_window: int | None = None  # the window at the end of which ``weights`` were set on chain


def flagged_reasons(views: list[WindowView], name: str) -> list[str]:
    """Why the validator held a peer back, over the run (empty: never)."""
    reasons: list[str] = []
    for view in views:
        f = view.peers.get(name, {})
        status = str(f.get("status", ""))
        found = []
        if "copy" in f:
            found.append(f"copied {f['copy'].get('action', '')}".strip())
        if status in ("missing", "late") or status.startswith("invalid"):
            found.append(status.split(":")[0])
        if f.get("steps_behind") == "inf" or (isinstance(f.get("steps_behind"), (int, float))
                                             and f["steps_behind"] > 3):
            found.append("out of sync")
        if f.get("banned"):
            found.append("banned")
        reasons += [r for r in found if r not in reasons]
    return reasons


def summarise(scenario: Scenario, views: list[WindowView], hotkeys: dict[str, str], bytes_per_message: float,
              wall_s: float) -> dict:
    """``summary.json`` exactly as DESIGN.md specifies it."""
    last = views[-1] if views else WindowView(-1, float("nan"), {}, {})
    behaviours = scenario.nodes()
    total = sum(last.weights.values())
    honest = sum(w for n, w in last.weights.items() if behaviours.get(n) == "honest")
    peers = []
    for name, spec in behaviours.items():
        f = last.peers.get(name, {})
        peers.append({"name": name, "behaviour": spec, "hotkey": hotkeys[name],
                      "weight": round(last.weights.get(name, 0.0), 6) + 0.0,
                      "ordinal": round(float(f.get("ordinal", 0.0)), 6) + 0.0,
                      "final_score": round(float(f.get("final", 0.0)), 6) + 0.0,  # + 0.0: no "-0.0"
                      "flagged": bool(flagged_reasons(views, name))})
    share = round(honest / total, 6) if total else 0.0
    return {"windows": len(views), "wall_s": round(wall_s, 2), "bytes_per_message": round(bytes_per_message, 1),
            "loss": [round(v.val_loss, 5) for v in views], "honest_weight_share": share, "peers": peers}


def write_outputs(scenario: Scenario, views: list[WindowView], summary: dict, cfg: GauntletConfig,
                  parameters: int) -> None:
    from peers.report import write_report

    out = scenario.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for v in views:
            fh.write(json.dumps({"window": v.window, "val_loss": v.val_loss, "weights": v.weights, "peers": v.peers,
                                 "phase_s": v.phase_s}) + "\n")
    write_report(out, scenario, views, summary, cfg, parameters)


def run_lockstep(scenario: Scenario, progress) -> tuple[list[WindowView], dict[str, str], float, int]:
    from gauntlet.data import open_dataset
    from gauntlet.models import mean_loss
    from peers.behaviours import load_behaviour
    from peers.lockstep import build, run_window
    from peers.node import default_data_dir

    cfg = scenario.config_for()
    if scenario.storage not in (None, "file") or scenario.chain not in (None, "local"):
        raise ValueError("--mode lockstep runs on a virtual clock that only the embedded chain and file stores can "
                         "follow; use --mode live for other --storage/--chain URLs")
    data_dir = scenario.data_dir or default_data_dir()
    progress.phase("preparing data")
    open_dataset(cfg.data, data_dir)  # tokenised once here (text sources), or shards checked
    behaviours = {name: load_behaviour(spec) for name, spec in scenario.nodes().items()}
    net = build(scenario.out / "network", cfg, behaviours, data_dir, identity=scenario.identity,
                stop_after_window=scenario.windows - 1)  # the validator also sets weights at the last window
    hotkeys = {name: peer.identity.hotkey for name, peer in net.peers.items()}
    by_hotkey = {h: n for n, h in hotkeys.items()}
    val = list(net.validator.val_set.batch(list(range(4 * cfg.train.batch_size))).split(cfg.train.batch_size))
    uid_of = {n.hotkey: n.uid for n in net.chain.metagraph()}
    views: list[WindowView] = []
    sizes: list[int] = []
    weights_window = None
    while net.window < scenario.windows:
        w = net.window
        progress.phase("training, uploading, validating", window=w)
        t0 = time.time()
        record = run_window(net)
        loss = mean_loss(net.validator.model, val, cfg.model.autocast_bf16)
        row = net.chain.weights().get(uid_of[net.validator.identity.hotkey], {})
        weights = {name: row.get(uid_of[h], 0.0) for name, h in hotkeys.items()}
        peers = {by_hotkey[h]: f for h, f in record["peers"].items() if h in by_hotkey}
        weights_window = w if record.get("weights") else weights_window
        views.append(WindowView(w, loss, weights, peers, {"window_s": round(time.time() - t0, 2)}, weights_window))
        for name, peer in net.peers.items():
            if behaviours[name].name == "honest":
                lines = (peer.opts.run_dir / "metrics.jsonl").read_text().splitlines()
                sizes += [json.loads(lines[-1]).get("bytes_sent", 0)]
        progress.window_done(views[-1], scenario)
    mean_bytes = sum(sizes) / len(sizes) if sizes else 0.0
    return views, hotkeys, mean_bytes, sum(p.numel() for p in net.validator.params.values())
