"""The mechanism with many validators: who gets the tokens when three honest validators (stakes
40/30/20), a colluder (10, paying the free-rider half of its weight) and a weight copier (10) score
the default peers and adversaries, with the chain's commit-reveal off and on.

    python benchmarks/validators.py          # lockstep, seed 0: two runs (about 10 minutes on 2 cores)

Each run is ``gauntlet simulate`` with these validators; tokens come from its ``summary.json`` (what
the embedded chain paid by Yuma Consensus), the validators' weights from the run's chain.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scipy.stats import spearmanr  # noqa: E402

from benchmarks.common import finish, log, parser  # noqa: E402
from gauntlet.chain.local import LocalChain  # noqa: E402
from peers.cli import main as gauntlet  # noqa: E402

VALIDATORS = ["honest@40", "honest@30", "honest@20", "colluder@10", "weight-copier@10"]


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (ties share their mean rank); 1 when both rows are constant."""
    rho = spearmanr(a, b).statistic
    return 1.0 if math.isnan(rho) else float(rho)


def honest_agreement(out: Path, summary: dict) -> float:
    """Mean rank correlation, over pairs of honest validators, of the last weights each set (over
    every peer; a peer left out counts as weight 0)."""
    chain = LocalChain(out / "network" / "chain.db", clock="manual")
    uid = {n.hotkey: n.uid for n in chain.metagraph()}
    peers = [uid[p["hotkey"]] for p in summary["peers"]]
    rows = []
    for v in summary["validators"]:
        if v["behaviour"] == "honest":
            history = chain.weights_history(uid[v["hotkey"]])
            last = history[-1][1] if history else {}
            rows.append([last.get(p, 0.0) for p in peers])
    chain.close()
    pairs = list(itertools.combinations(rows, 2))
    return round(sum(spearman(a, b) for a, b in pairs) / len(pairs), 4) if pairs else 1.0


def simulate(out: Path, seed: int, *extra: str) -> dict:
    started = time.time()
    flags = [f for v in VALIDATORS for f in ("--validator", v)]
    if gauntlet(["simulate", "--out", str(out), "--quiet", "--seed", str(seed), *flags, *extra]) != 0:
        raise SystemExit(f"gauntlet simulate {' '.join(extra)} failed")
    summary = json.loads((out / "summary.json").read_text())
    miners = sum(p["tokens"] for p in summary["peers"])
    free = sum(p["tokens"] for p in summary["peers"] if p["behaviour"] == "free-rider")
    return {"free_rider_token_share": round(free / miners, 6) if miners else 0.0,
            "honest_token_share": summary["honest_token_share"],
            "dividends_per_stake": {v["name"]: round(v["tokens"] / v["stake"], 6) if v["stake"] else 0.0
                                    for v in summary["validators"]},
            "validators": summary["validators"], "miners_tokens": round(miners, 6),
            "honest_validator_rank_correlation": honest_agreement(out, summary),
            "final_loss": summary["loss"][-1], "wall_s": round(time.time() - started, 1)}


def main() -> None:
    ap = parser(__doc__, "validators")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=20)
    args = ap.parse_args()
    result: dict = {"seed": args.seed, "windows": args.windows, "validators": VALIDATORS}
    with tempfile.TemporaryDirectory(prefix="gauntlet-validators-") as tmp:
        log("commit-reveal off ...")
        off = simulate(Path(tmp) / "off", args.seed, "--windows", str(args.windows))
        log("commit-reveal on ...")
        on = simulate(Path(tmp) / "on", args.seed, "--windows", str(args.windows), "--commit-reveal")
    per_stake = dict(off["dividends_per_stake"])
    copier = per_stake.pop("weight-copier")
    result.update({
        "free_rider_token_share": off["free_rider_token_share"], "honest_token_share": off["honest_token_share"],
        "dividends_per_stake": {**per_stake, "copier_cr_off": copier,
                                "copier_cr_on": on["dividends_per_stake"]["weight-copier"]},
        "honest_validator_rank_correlation": off["honest_validator_rank_correlation"],
        "commit_reveal_off": off, "commit_reveal_on": on})
    result["goals"] = {"free_rider_at_most_1pct": result["free_rider_token_share"] <= 0.01,
                       "honest_share_at_least_0.9": result["honest_token_share"] >= 0.9,
                       "commit_reveal_lowers_copier": (result["dividends_per_stake"]["copier_cr_on"]
                                                       < result["dividends_per_stake"]["copier_cr_off"])}
    finish(result, args)


if __name__ == "__main__":
    main()
