"""Validator costs (prints one JSON line with --json).

- ``eval_cost_forward_passes``: the time of one peer's loss test (own before/after, random after;
  the random-before loss is shared by the window) divided by the time of one forward pass over the
  eval batches. PROTOCOL's design point is about three.
- ``copy_detection_s``: copy detection over P peers' messages for the model's shapes, P = 8 → 128.
- ``peak_rss_mb``: the process's peak resident memory at the end; ``peak_rss_mb_by_peers``: the peak
  once the messages of P peers were built and compared (it only grows: read the increments).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, finish, log, parser  # noqa: E402
from gauntlet.config import ModelConfig, SparseLoCoConfig  # noqa: E402
from gauntlet.models import build_model, mean_loss  # noqa: E402
from gauntlet.scoring import loss_test  # noqa: E402
from gauntlet.sparseloco import ErrorFeedback  # noqa: E402
from gauntlet.uniqueness import copy_stats  # noqa: E402


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run(preset: str, seq_len: int, sequences: int, peers: list[int], repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=preset, device="cpu"), 256, seq_len, seed=0)
    params = dict(model.named_parameters())
    own = [torch.randint(0, 256, (sequences, seq_len))]
    rand = [torch.randint(0, 256, (sequences, seq_len))]
    update = {n: torch.randn(p.shape) * 1e-3 for n, p in params.items()}
    forward = best(lambda: mean_loss(model, own), repeats)
    rand_before = mean_loss(model, rand)
    one_peer = best(lambda: loss_test(model, update, 0.2, own, rand, rand_before), repeats)

    cfg = SparseLoCoConfig()
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    copies, memory = {}, {}
    log(f"{preset}: one forward {forward:.3f} s, one loss test {one_peer:.3f} s")
    for count in peers:
        messages = [ErrorFeedback(shapes, cfg).compress({n: torch.randn(s) for n, s in shapes.items()})
                    for _ in range(count)]
        copies[str(count)] = round(best(lambda m=messages: copy_stats(m), max(1, repeats // 2)), 4)
        memory[str(count)] = peak_rss_mb()
        log(f"{preset}: copy detection over {count} peers {copies[str(count)]} s")
        del messages
    return {
        "benchmark": "validator", "model": preset, "parameters": sum(p.numel() for p in params.values()),
        "eval_sequences": sequences, "seq_len": seq_len, "forward_s": round(forward, 4),
        "loss_test_s": round(one_peer, 4), "eval_cost_forward_passes": round(one_peer / forward, 2),
        "copy_detection_s": copies, "peak_rss_mb": peak_rss_mb(), "peak_rss_mb_by_peers": memory,
    }


def main() -> None:
    ap = parser(__doc__, "validator_tiny")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=8, help="eval sequences (own, and random)")
    ap.add_argument("--peers", default="8,16,32,64,128")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.save == RESULTS / "validator_tiny.json":
        args.save = RESULTS / f"validator_{args.model}.json"
    torch.set_num_threads(args.threads)
    finish(run(args.model, args.seq_len, args.sequences, [int(p) for p in args.peers.split(",")], args.repeats), args)


if __name__ == "__main__":
    main()
