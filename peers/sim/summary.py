"""What a simulation says about each window and about the run: the views the report is drawn from,
why a peer was flagged, what entered the model, and ``summary.json`` (README.md, "What you are
looking at", lists its fields)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gauntlet.chain.local import RAO
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
    aggregated: list[str] = field(default_factory=list)  # peers whose message entered an honest peer's aggregate
    list_rules: dict[str, int] = field(default_factory=dict)  # how honest peers found the list they followed
    list_late: bool = False  # an honest peer aggregated without the window's own list in time

    @property
    def listed(self) -> bool:
        """Whether a list naming peers governed some honest peer's aggregate (rules: ListChoice.rule)."""
        return any(self.list_rules.get(r) for r in ("list", "fallback", "none"))


@dataclass
class SimRun:
    """What a simulation mode hands to :func:`summarise` and the report."""

    views: list[WindowView]
    hotkeys: dict[str, str]  # peer name -> hotkey
    bytes_per_message: float  # the honest peers' mean message size
    parameters: int  # of the model
    behind: list[dict] = field(default_factory=list)  # nodes that warned they cannot keep up (live mode)
    payouts: list = field(default_factory=list)  # the chain's gauntlet.chain.Payout per uid at the end
    epochs: list[dict] = field(default_factory=list)  # the chain's epochs (LocalChain.epochs)
    validators: dict[str, str] = field(default_factory=dict)  # validator name (honest-0, colluder) -> hotkey
    chain_weights: dict[int, dict[int, float]] = field(default_factory=dict)  # visible on chain at the end


def window_lines(path: Path) -> dict[int, dict]:
    """A peer's ``metrics.jsonl`` window lines by window (events such as ``resumed`` left out)."""
    if not path.exists():
        return {}
    lines = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {m["window"]: m for m in lines if "event" not in m and "window" in m}


def note_entries(view: WindowView, lines: list[dict], names: dict[str, str]) -> None:
    """Fill in what entered the model in ``view``'s window from the honest peers' metrics ``lines`` of
    that window (``names``: hotkey -> peer name)."""
    view.aggregated = sorted({names.get(h, h[:12]) for line in lines for h in line.get("gathered", [])})
    consulted = [line for line in lines if line.get("list")]
    view.list_rules = dict(Counter(line["list"] for line in consulted))
    # no list can exist for the first window (nothing was evaluated before it)
    view.list_late = view.window > 0 and any(not line.get("list_in_time") for line in consulted)


def entries(views: list[WindowView], behaviours: dict[str, str]) -> dict:
    """The summary's account of what entered the model (README.md, "What you are looking at")."""
    first = next((v.window for v in views if v.listed), None)
    adversaries = [[n for n in v.aggregated if behaviours.get(n, "honest") != "honest"] for v in views]
    return {"first_list_window": first, "windows_list_late": sum(v.list_late for v in views),
            "adversary_messages_aggregated": sum(len(a) for v, a in zip(views, adversaries)
                                                 if first is not None and v.window >= first),
            "adversary_messages_aggregated_total": sum(len(a) for a in adversaries)}


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


TOKEN = RAO  # the chain's smallest units per token


def payouts(scenario: Scenario, run: SimRun) -> dict:
    """Tokens: per peer and per validator (everything the chain paid them), per epoch (owner, miners,
    validators) and the honest peers' share of the miners' tokens."""
    by_hotkey = {p.hotkey: p for p in run.payouts}
    validator_uids = {by_hotkey[h].uid for h in run.validators.values() if h in by_hotkey}
    tokens = {name: by_hotkey[h].balance / TOKEN if h in by_hotkey else 0.0 for name, h in run.hotkeys.items()}
    behaviours = scenario.nodes()
    miners = sum(tokens.values())
    honest = sum(t for n, t in tokens.items() if behaviours.get(n) == "honest")
    trust = run.epochs[-1]["validator_trust"] if run.epochs else []  # u16, by uid, at the last epoch

    specs = {v.name: v for v in scenario.validator_specs()}

    def validator(name: str, hotkey: str) -> dict:
        pay = by_hotkey.get(hotkey)
        vtrust = trust[pay.uid] / 65535 if pay is not None and pay.uid < len(trust) else 0.0
        spec = specs.get(name)
        return {"name": name, "behaviour": spec.behaviour if spec else "honest", "hotkey": hotkey,
                "stake": round(spec.stake, 6) if spec else 0.0, "vtrust": round(vtrust, 6),
                "tokens": round(pay.balance / TOKEN, 6) if pay is not None else 0.0}
    validators = [validator(name, h) for name, h in run.validators.items()]
    emission = [{"block": e["block"], "owner": e["owner"] / TOKEN,
                 "miners": sum(v for u, v in enumerate(e["paid"]) if u not in validator_uids) / TOKEN,
                 "validators": sum(v for u, v in enumerate(e["paid"]) if u in validator_uids) / TOKEN}
                for e in run.epochs]
    return {"tokens": {n: round(t, 6) for n, t in tokens.items()}, "validators": validators, "emission": emission,
            "honest_token_share": round(honest / miners, 6) if miners else 0.0}


def summarise(scenario: Scenario, run: SimRun, wall_s: float) -> dict:
    """``summary.json``, as README.md ("What you are looking at") describes it."""
    views, hotkeys = run.views, run.hotkeys
    paid = payouts(scenario, run)
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
                      "flagged": bool(flagged_reasons(views, name)), "tokens": paid["tokens"].get(name, 0.0)})
    share = round(honest / total, 6) if total else 0.0
    return {"windows": len(views), "wall_s": round(wall_s, 2), "bytes_per_message": round(run.bytes_per_message, 1),
            "loss": [round(v.val_loss, 5) for v in views], "honest_weight_share": share,
            **entries(views, behaviours), "cannot_keep_up": run.behind,
            "honest_token_share": paid["honest_token_share"], "emission": paid["emission"],
            "validators": paid["validators"], "peers": peers}
