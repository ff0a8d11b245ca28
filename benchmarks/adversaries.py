"""What the default adversaries cost the shared model: the default simulation against the same one
without adversaries (same seed, same settings), and what entered the model.

    python benchmarks/adversaries.py                 # lockstep, seed 0 (about 5 minutes on 2 cores)
    python benchmarks/adversaries.py --live          # also the default live run (about 11 minutes more)

Each run is ``gauntlet simulate`` with its defaults; the figures come from its ``summary.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import finish, log, parser  # noqa: E402
from peers.cli import main as gauntlet  # noqa: E402


def simulate(out: Path, *extra: str) -> dict:
    started = time.time()
    if gauntlet(["simulate", "--out", str(out), "--quiet", *extra]) != 0:
        raise SystemExit(f"gauntlet simulate {' '.join(extra)} failed")
    summary = json.loads((out / "summary.json").read_text())
    adversaries = [p for p in summary["peers"] if p["behaviour"] != "honest"]
    return {"final_loss": summary["loss"][-1], "first_loss": summary["loss"][0],
            "honest_weight_share": summary["honest_weight_share"],
            "max_adversary_weight": max((p["weight"] for p in adversaries), default=0.0),
            "first_list_window": summary["first_list_window"], "windows_list_late": summary["windows_list_late"],
            "adversary_messages_aggregated": summary["adversary_messages_aggregated"],
            "adversary_messages_aggregated_total": summary["adversary_messages_aggregated_total"],
            "cannot_keep_up": summary["cannot_keep_up"], "wall_s": round(time.time() - started, 1)}


def main() -> None:
    ap = parser(__doc__, "adversaries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--live", action="store_true", help="also run the default live simulation")
    args = ap.parse_args()
    result: dict = {"seed": args.seed, "windows": 20}
    with tempfile.TemporaryDirectory(prefix="gauntlet-adversaries-") as tmp:
        log("lockstep, default adversaries ...")
        result["lockstep"] = simulate(Path(tmp) / "default", "--seed", str(args.seed))
        log("lockstep, no adversaries ...")
        result["lockstep_no_adversaries"] = simulate(Path(tmp) / "none", "--seed", str(args.seed), "--no-adversaries")
        result["lockstep_loss_cost"] = round(result["lockstep"]["final_loss"]
                                             - result["lockstep_no_adversaries"]["final_loss"], 5)
        if args.live:
            log("live, default adversaries ...")
            result["live"] = simulate(Path(tmp) / "live", "--mode", "live", "--seed", str(args.seed))
    finish(result, args)


if __name__ == "__main__":
    main()
