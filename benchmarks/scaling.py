"""How the cost of a simulated network grows with the number of peers.

For each P (default 4, 8, 16, 32, 64) this runs ``gauntlet simulate --mode lockstep`` with P honest
peers and one validator on the ``tiny`` model (the simulation's small defaults: 4 inner steps of 4
sequences of 64 tokens per window) in a child process, and reports:

- ``wall_s``: the whole run (data already prepared), and ``window_s``: the mean wall time of one
  window of the whole network (every peer trains, uploads, gathers and applies; the validator
  gathers, checks, loss-tests ``validator.eval_peers`` peers, rates and publishes);
- ``validator_s``: the validator's own time per window (from its signed window records), split into
  stage 1 (gather, validity, sync, copy detection) and the loss tests; against the window budget
  (``timing.blocks_per_window`` × 12 s) this says whether one validator keeps up with P peers;
- ``peak_rss_mb``: the child process's peak resident memory (every node lives in it).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, finish, log, parser  # noqa: E402

BLOCK_S = 12.0  # the local chain's (and Bittensor's) block time


def simulate(peers: int, windows: int, model: str, extra: list[str], out: Path) -> dict:
    """One lockstep simulation in a child process; its timings, records and peak memory."""
    cmd = [sys.executable, "-m", "peers.cli", "simulate", "--honest", str(peers), "--no-adversaries",
           "--windows", str(windows), "--model", model, "--out", str(out), "--quiet"]
    for setting in extra:
        cmd += ["--set", setting]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if status != 0:
        raise SystemExit(f"simulate with {peers} peers failed (status {status}):\n{err[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    record_files = sorted(out.glob("network/validator/bucket/runs/*/windows/*/record.json"))
    records = [json.loads(p.read_text()) for p in record_files]
    return {"wall_s": wall, "window_s": [r["phase_s"]["window_s"] for r in rows],
            "durations": [r["durations"] for r in records], "peak_rss_mb": usage.ru_maxrss / 1024,
            "final_loss": rows[-1]["val_loss"], "aggregated": [len(r["aggregated"]) for r in records]}


def main() -> None:
    ap = parser(__doc__, "scaling")
    ap.add_argument("--peers", default="4,8,16,32,64", help="network sizes, comma-separated")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="extra setting for every simulation (repeatable)")
    args = ap.parse_args()
    blocks = next((int(s.split("=", 1)[1]) for s in args.set if s.startswith("timing.blocks_per_window=")), 10)
    results = {}
    with tempfile.TemporaryDirectory(prefix="gauntlet-scaling-") as tmp:
        for p in [int(x) for x in args.peers.split(",")]:
            log(f"{p} peers: simulating {args.windows} windows")
            r = simulate(p, args.windows, args.model, args.set, Path(tmp) / f"p{p}")
            steady = r["durations"][1:] or r["durations"]  # window 0 has no history to check
            results[str(p)] = {
                "wall_s": round(r["wall_s"], 1),
                "window_s": round(statistics.fmean(r["window_s"]), 2),
                "window_s_per_peer": round(statistics.fmean(r["window_s"]) / p, 3),
                "validator_s": round(statistics.fmean(d["total_s"] for d in steady), 2),
                "validator_max_s": round(max(d["total_s"] for d in r["durations"]), 2),
                "validator_stage1_s": round(statistics.fmean(d["stage1_s"] for d in steady), 2),
                "validator_loss_tests_s": round(statistics.fmean(d["loss_tests_s"] for d in steady), 2),
                "aggregated_per_window": r["aggregated"],
                "peak_rss_mb": round(r["peak_rss_mb"]),
                "final_loss": round(r["final_loss"], 4),
            }
            log(f"{p} peers: {results[str(p)]}")
    finish({"benchmark": "scaling", "model": args.model, "windows": args.windows, "settings": args.set,
            "window_budget_s": blocks * BLOCK_S, "results": results}, args)


if __name__ == "__main__":
    main()
