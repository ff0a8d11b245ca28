"""The run directory a simulation leaves: ``summary.json``, ``metrics.jsonl``, and ``report.md`` with its
PNG plots, readable without the code."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from gauntlet.config import GauntletConfig  # noqa: E402
from peers.sim.scenario import Scenario  # noqa: E402
from peers.sim.payouts import clipped_lines, cumulative_tokens  # noqa: E402
from peers.sim.summary import SimRun, WindowView, flagged_reasons  # noqa: E402


def _integer_windows(*axes) -> None:
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _style(behaviour: str) -> dict:
    return {"linestyle": "-", "linewidth": 1.8} if behaviour == "honest" else {"linestyle": "--", "linewidth": 1.2}


def _save(fig, ax, path: Path, legend: bool) -> None:
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1))
    _integer_windows(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss(views, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot([v.window for v in views], [v.val_loss for v in views], marker="o", color="tab:blue")
    ax.set(xlabel="window", ylabel="validation loss (nats/token)", title="Validation loss of the shared model")
    _save(fig, ax, path, legend=False)


def _set_after(views) -> str:
    window = views[-1].weights_window if views else None
    return " (none were set)" if window is None else f", set after window {window}"


def plot_weights(views, behaviours: dict[str, str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    windows = [v.window for v in views]
    for name, spec in behaviours.items():
        ax.plot(windows, [v.weights.get(name, 0.0) for v in views], label=name, **_style(spec))
    ax.set(xlabel="window", ylabel="weight on chain", title="Weights set by the validator (solid: honest)")
    _save(fig, ax, path, legend=True)


def plot_ratings(views, behaviours: dict[str, str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    windows = [v.window for v in views]
    for name, spec in behaviours.items():
        mu = [float(v.peers.get(name, {}).get("mu", 25.0)) for v in views]
        sigma = [float(v.peers.get(name, {}).get("sigma", 25 / 3)) for v in views]
        line, = ax.plot(windows, mu, label=name, **_style(spec))
        ax.fill_between(windows, [m - s for m, s in zip(mu, sigma)], [m + s for m, s in zip(mu, sigma)],
                        color=line.get_color(), alpha=0.08)
    ax.set(xlabel="window", ylabel="OpenSkill μ (band: ±σ)", title="Ratings with their uncertainty")
    _save(fig, ax, path, legend=True)


FACTORS = [("ma", "moving average (uniqueness)"), ("sync", "sync score"), ("penalty", "penalty factor"),
           ("final", "final score")]


def plot_factors(views, behaviours: dict[str, str], path: Path) -> None:
    adversaries = [n for n, s in behaviours.items() if s != "honest"]
    honest = [n for n, s in behaviours.items() if s == "honest"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    windows = [v.window for v in views]
    for ax, (key, title) in zip(axes.flat, FACTORS):
        if honest:
            values = [[float(v.peers.get(n, {}).get(key, 0.0)) for n in honest] for v in views]
            ax.plot(windows, [sum(row) / len(row) for row in values], color="black", linewidth=2.2,
                    label="honest (mean)")
        for name in adversaries:
            ax.plot(windows, [float(v.peers.get(name, {}).get(key, 0.0)) for v in views], label=name, linestyle="--")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    _integer_windows(*axes.flat)
    axes[1][0].set_xlabel("window")
    axes[1][1].set_xlabel("window")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=5)
    fig.suptitle("Score factors of each adversary, against the honest mean")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tokens(run: SimRun, behaviours: dict[str, str], validators: dict[str, str], path: Path) -> None:
    """Cumulative tokens per peer (left) and per validator (right), epoch by epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, names, hotkeys, title in ((left, behaviours, run.hotkeys, "peers (incentive)"),
                                      (right, validators, run.validators, "validators (dividends)")):
        blocks, paid = cumulative_tokens(run, hotkeys)
        for name, spec in names.items():
            if name in paid:
                ax.plot(blocks, paid[name], label=name, **_style(spec))
        ax.set(xlabel="block of the epoch", ylabel="tokens received so far", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle("What Yuma Consensus paid, epoch by epoch (solid: honest)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(scenario: Scenario, run: SimRun, summary: dict, cfg: GauntletConfig) -> None:
    """The run directory: ``summary.json``, ``metrics.jsonl`` (one line per window), ``report.md`` and its plots."""
    views, out = run.views, scenario.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    behaviours = scenario.nodes()
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for v in views:
            fh.write(json.dumps({"window": v.window, "val_loss": v.val_loss, "weights": v.weights, "peers": v.peers,
                                 "phase_s": v.phase_s, "aggregated": v.aggregated,
                                 "adversaries_aggregated": [n for n in v.aggregated
                                                            if behaviours.get(n, "honest") != "honest"],
                                 "list_rules": v.list_rules, "list_late": v.list_late}) + "\n")
    write_report(out, scenario, run, summary, cfg)


def write_report(out: Path, scenario: Scenario, run: SimRun, summary: dict, cfg: GauntletConfig) -> None:
    """``report.md`` and its five plots."""
    behaviours, views = scenario.nodes(), run.views
    plot_loss(views, out / "loss.png")
    plot_weights(views, behaviours, out / "weights.png")
    plot_ratings(views, behaviours, out / "ratings.png")
    plot_factors(views, behaviours, out / "factors.png")
    plot_tokens(run, behaviours, {v["name"]: v["behaviour"] for v in summary["validators"]}, out / "tokens.png")
    (out / "report.md").write_text(_headline(scenario, views, summary, cfg, run.parameters) + EXPLAINED
                                   + _payouts_section(summary, clipped_lines(scenario, run, summary)))


def entered_line(summary: dict) -> str:
    """What entered the model, in one sentence (the report and the command's output)."""
    first, late = summary["first_list_window"], summary["windows_list_late"]
    after, total = summary["adversary_messages_aggregated"], summary["adversary_messages_aggregated_total"]
    lists = ("no peer list named anyone: every valid message counted" if first is None else
             f"**{after}** adversary messages entered an honest peer's aggregate after the first peer list "
             f"(window {first}), {total - after} before it, while every valid message counted")
    return f"What entered the model: {lists}; windows aggregated without the window's list in time: **{late}**."


def tokens_line(summary: dict) -> str:
    """What the chain paid, in one sentence (the report and the command's output)."""
    epochs = summary.get("emission") or []
    if not epochs:
        return "Payouts: the chain ran no epoch in this run."
    miners = sum(e["miners"] for e in epochs)
    validators = ", ".join(f"{v['name']} {v['tokens']:.2f} (vtrust {v['vtrust']:.2f})" for v in summary["validators"])
    return (f"Payouts: {len(epochs)} epochs of Yuma Consensus paid the peers {miners:.2f} tokens — honest peers "
            f"**{summary['honest_token_share']:.1%}** of them — the validators {validators}, and the subnet owner "
            f"{sum(e['owner'] for e in epochs):.2f}.")


def _behind(summary: dict) -> str:
    slow = summary.get("cannot_keep_up") or []
    if not slow:
        return ""
    rows = "\n".join(f"  - {s['node']} ({s['at']}): {s['what']}" for s in slow)
    return f"- Nodes that warned they cannot keep up with the windows:\n{rows}\n"


def _headline(scenario: Scenario, views: list[WindowView], summary: dict, cfg: GauntletConfig, parameters: int) -> str:
    """The report's opening: what ran, the figures that matter, and who got paid."""
    rows = "\n".join(
        f"| {p['name']} | {p['behaviour']} | {p['weight']:.4f} | {p['tokens']:.2f} | {p['ordinal']:.2f} | "
        f"{p['final_score']:.3f} | "
        f"{'yes' if p['flagged'] else 'no'} | {', '.join(flagged_reasons(views, p['name'])) or '—'} |"
        for p in sorted(summary["peers"], key=lambda p: -p["weight"]))
    loss = summary["loss"]
    return f"""# Gauntlet simulation report

{scenario.honest} honest peers and {len(scenario.adversaries)} adversaries trained the `{cfg.model.preset}` model for
{summary['windows']} windows ({scenario.mode} mode, seed {scenario.seed}) in {summary['wall_s']:.0f} s.
{_validators_sentence(summary)} set weights on chain every {cfg.validator.weights_every} windows
and at the last one (`{cfg.validator.policy}` policy){" with commit-reveal" if scenario.commit_reveal else ""}.

- Validation loss: **{loss[0]:.3f} → {loss[-1]:.3f}** (nats per token; the model starts at about ln(vocabulary)).
- Honest peers' share of the weight: **{summary['honest_weight_share']:.1%}**.
- Each update was **{summary['bytes_per_message']:,.0f} bytes** on the wire, against
  {4 * parameters:,} bytes for a dense fp32 pseudo-gradient of the {parameters:,} parameters.
- {entered_line(summary)}
- {tokens_line(summary)}
{_behind(summary)}
## Who got paid

| peer | behaviour | weight | tokens | rating (μ − 3σ) | final score | flagged | why |
|---|---|---|---|---|---|---|---|
{rows}

*weight*: the share of the leading validator's last weights on chain{_set_after(views)}. *tokens*: what the
chain paid the peer over the run (an epoch of Yuma Consensus each time weights are set; see
docs/payouts.md). *rating*: the OpenSkill
ordinal, which rises when a peer's update lowers the loss more than the others' in the same window.
*final score*: rating × max(0, moving average of the uniqueness indicator) × sync score × penalty
factor. *flagged*: the validator caught it at least once (copying, missing or late uploads, invalid
messages, out of sync).
"""


EXPLAINED = """
## Validation loss

![validation loss](loss.png)

The shared model's loss on held-out data after each window's outer step. It falls while adversaries
attack: missing, late and invalid updates never count, and from the validator's first peer list on
only peers whose loss tests show that their updates help are aggregated. Before that list — while
nobody has been rated yet — every valid update counts, and clipping each to the median norm limits
what an attacker can do.

## Weights

![weights](weights.png)

What each peer would be paid, as the validator sets it on chain. Honest peers are solid lines,
adversaries dashed. Adversaries start with nothing to earn and never get a share that lasts.

## Ratings

![ratings](ratings.png)

OpenSkill μ per peer with a ±σ band. A new peer starts at μ = 25, σ ≈ 8.3; every window that it is
loss-tested its σ shrinks and its μ moves with how its update ranked. Peers that upload nothing,
too late or garbage are ranked last in the window's match.

## Why adversaries lose

![factors](factors.png)

The four factors of the final score for each adversary, with the honest peers' mean in black:
the **moving average** falls for peers whose update does not help their own assigned data more than
random data (noise, sign flips, training on other data); **sync** collapses for a peer that stops
applying the network's steps (stale); the **penalty** compounds for missing, late or invalid uploads and
for copying; a **final score** of zero means no weight.
"""


def _validators_sentence(summary: dict) -> str:
    validators = summary["validators"]
    if len(validators) == 1:
        return "One validator scored them with Gauntlet and"
    total = sum(v["stake"] for v in validators) or 1.0
    named = ", ".join(f"{v['name']} ({v['stake'] / total:.0%} of the stake)" for v in validators)
    return (f"{len(validators)} validators — {named} — followed the highest-stake one that published in time; "
            "those that evaluate scored the peers with Gauntlet, and all")


def _payouts_section(summary: dict, clipped: list[str]) -> str:
    why = "\n".join(f"- {line}" for line in clipped)
    return f"""
## Payouts

![tokens](tokens.png)

What the chain paid: every tempo Yuma Consensus combines the validators' weights by stake — for
each peer, the consensus is the highest weight that validators holding half of the stake (κ) give
it at least, and weights above it are clipped — pays the peers in proportion to the clipped,
stake-weighted weights (incentive), and the validators by their bonds in the peers they weighted
(dividends), so a validator that agrees with the others early earns more per unit of stake.
{why}
"""
