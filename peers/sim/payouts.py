"""What the chain paid in a simulation, told for the report: cumulative tokens per node, epoch by epoch,
and why a dishonest or careless validator's weights moved little (Yuma Consensus clips them)."""

from __future__ import annotations

from peers.sim.scenario import Scenario
from peers.sim.summary import TOKEN, SimRun

U16 = 65535


def cumulative_tokens(run: SimRun, names: dict[str, str]) -> tuple[list[int], dict[str, list[float]]]:
    """The epochs' blocks, and for each node of ``names`` (name → hotkey: the peers, or the
    validators) the tokens it received up to each."""
    uid_of = {p.hotkey: p.uid for p in run.payouts}
    blocks = [e["block"] for e in run.epochs]
    out: dict[str, list[float]] = {}
    for name, hotkey in names.items():
        uid, total, series = uid_of.get(hotkey), 0.0, []
        for epoch in run.epochs:
            paid = epoch["paid"]
            total += paid[uid] / TOKEN if uid is not None and uid < len(paid) else 0.0
            series.append(total)
        out[name] = series
    return blocks, out


def clipped_lines(scenario: Scenario, run: SimRun, summary: dict) -> list[str]:
    """One sentence per validator that is not honest: what it did and what Yuma Consensus made of it."""
    if not run.epochs:
        return []
    uid_of = {p.hotkey: p.uid for p in run.payouts}
    last = run.epochs[-1]
    honest = [v for v in summary["validators"] if v["behaviour"] == "honest" and v["stake"]]
    honest_rate = sum(v["tokens"] / v["stake"] for v in honest) / len(honest) if honest else 0.0
    miners = sum(p["tokens"] for p in summary["peers"]) or 1.0
    total_stake = sum(v["stake"] for v in summary["validators"]) or 1.0
    lines = []
    for v in summary["validators"]:
        rate = v["tokens"] / v["stake"] if v["stake"] else 0.0
        earned = (f"vtrust {v['vtrust']:.2f} and {rate:.4f} tokens per unit of stake, against {honest_rate:.4f} "
                  "for the honest validators")
        who = f"**{v['name']}** ({v['stake'] / total_stake:.0%} of the stake)"
        if v["behaviour"] == "colluder":
            lines.append(f"{who} {_collusion(scenario, run, summary, v, uid_of, last, miners)} It earned {earned}.")
        elif v["behaviour"] == "weight-copier":
            seen = ("only the revealed ones, set an epoch or more earlier (commit-reveal)" if scenario.commit_reveal
                    else "the weights just set (no commit-reveal)")
            lines.append(f"{who} evaluated nothing and set the stake-weighted mean of the weights it could read on "
                         f"chain — {seen}. Where those lag the current consensus, the excess is clipped and its "
                         f"bonds grow later; it earned {earned}.")
        elif v["behaviour"] == "lazy":
            lines.append(f"{who} spread its weight evenly over every peer with a card; the consensus on the "
                         f"adversaries is about zero, so that part of its weight was clipped away; it earned {earned}.")
        elif v["behaviour"] == "crash":
            lines.append(f"{who} stopped halfway through the run; peers and validators followed the next validator "
                         f"by stake from then on, and its last weights stayed on chain (counted until the activity "
                         f"cutoff); it earned {earned}.")
        elif v["behaviour"] != "honest":
            lines.append(f"{who} ({v['behaviour']}) earned {earned}.")
    return lines


def _collusion(scenario, run, summary, v, uid_of, last, miners) -> str:
    target = scenario.colluder_target()
    names = {p["hotkey"]: p["name"] for p in summary["peers"]}
    if target is None or target not in uid_of or v["hotkey"] not in uid_of:
        return "had nobody to collude with."
    row = run.chain_weights.get(uid_of[v["hotkey"]], {})
    share = row.get(uid_of[target], 0.0) / (sum(row.values()) or 1.0)
    consensus = last["consensus"][uid_of[target]] / U16 if uid_of[target] < len(last["consensus"]) else 0.0
    name = names.get(target, target[:12])
    tokens = next((p["tokens"] for p in summary["peers"] if p["hotkey"] == target), 0.0)
    return (f"gave {share:.0%} of its weight to **{name}**; the consensus weight on {name} at the last epoch "
            f"was {consensus:.3f} (what half of the stake gives it at least), so everything above that was clipped: "
            f"{name} received {tokens:.2f} tokens, {tokens / miners:.2%} of the peers'.")
