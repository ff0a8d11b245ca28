"""What a simulation says about each window and about the run: the views the report is drawn from,
why a peer was flagged, and ``summary.json`` (README.md, "What you are looking at", lists its fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peers.sim.scenario import Scenario


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
    """``summary.json``, as README.md ("What you are looking at") describes it."""
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
