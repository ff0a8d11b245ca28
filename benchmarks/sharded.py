"""A sharded peer's window on N ranks: memory, time and bytes (prints JSON).

    python benchmarks/sharded.py [--nproc 1,2,4] [--model 150M]

For each N the script starts itself under ``torchrun --nproc_per_node N`` (gloo on CPU, NCCL on GPU)
and runs one peer window through :class:`peers.node.engine.ModelEngine`, exactly as ``gauntlet peer
--nproc N`` does: the model sharded by FSDP2, ``--inner-steps`` AdamW steps on random token batches
(``--batch`` sequences of ``--seq`` tokens, split over the ranks), error feedback and compression
(rank 0 writes the message), then decoding and applying that message as the aggregate of one peer.
Reported per N: the bytes of parameters + optimiser + error feedback held by each rank (counted from
the tensors) and the peak resident memory of each rank during the window (VmHWM, restarted once the
engine is built: every rank builds the full model once before ``fully_shard`` keeps its rows; that
set-up peak is reported apart; on CPU glibc's mmap threshold is fixed at 128 kB by default so that
freed tensors leave the process, see ``--mmap-threshold``), seconds per window and per phase,
the message size (the same for every N) and its sha256. The trained Δ, hence the message bytes, differ
between N in the last float bits: FSDP sums gradients in another order than one process (the codec itself
is byte-identical at every N, see tests/test_sharded_codec_torchrun.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import finish, log, parser, peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402


def worker(args) -> None:
    """One rank (under torchrun)."""
    import hashlib

    import torch.distributed as dist

    from gauntlet.config import load_config
    from gauntlet.models import build_model
    from gauntlet.parallel.world import exit_now, init_world, shutdown
    from gauntlet.sparseloco import encode_message
    from peers.node.engine import ModelEngine

    cfg = load_config(overrides=[f"model.preset={args.model}", f"inner.steps={args.inner_steps}",
                                 f"train.batch_size={args.batch}", f"data.seq_len={args.seq}", "inner.warmup_steps=1",
                                 "model.device=auto"])
    world = init_world(cfg.model.device)
    runtime_rss = rss_mb()  # torch, gloo and the interpreter: the same for every N
    torch.manual_seed(0)
    model = build_model(cfg.model, 256, cfg.data.seq_len, seed=cfg.seed)
    engine = ModelEngine(cfg, model, world, train=True)
    held = sum(t.numel() * t.element_size() for t in engine.layout.local.values())
    training = engine.training
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (args.batch, args.seq), generator=g) for _ in range(args.inner_steps)]
    timings = {}
    setup_rss = peak_rss_mb()
    reset_peak_rss()  # from here on: what the window itself holds, not building the full model once per rank
    dist.barrier()
    t0 = time.perf_counter()
    training.train.__wrapped__(training, batches)  # every rank calls the operation itself (no driver here)
    timings["train_s"] = time.perf_counter() - t0
    phase_peak = {"train": peak_rss_mb()}
    reset_peak_rss()
    opt_bytes = sum(nbytes(v) for s in training.trainer.optimizer.state.values() for v in s.values()
                    if torch.is_tensor(v) and v.dim())
    ef_bytes = sum(b.numel() * b.element_size() for b in training.error_feedback.buffers.values())
    t1 = time.perf_counter()
    cts = training.error_feedback.compress(training.delta)
    message = encode_message(cts, window=0, run="bench", codec=cfg.sparseloco, hotkey="bench") if world.main else b""
    timings["encode_s"] = time.perf_counter() - t1
    phase_peak["encode"] = peak_rss_mb()
    reset_peak_rss()
    from gauntlet.parallel.world import broadcast_bytes

    message = broadcast_bytes(world, message)
    dist.barrier()
    td = time.perf_counter()
    engine.updates.decode([message])  # parsing and checking the message alone, timed apart (apply decodes again)
    timings["decode_s"] = time.perf_counter() - td
    dist.barrier()
    t2 = time.perf_counter()
    engine.updates.apply_messages.__wrapped__(engine.updates, [message])
    timings["decode_apply_s"] = time.perf_counter() - t2
    timings["window_s"] = time.perf_counter() - t0 - timings["decode_s"]
    phase_peak["decode_apply"] = peak_rss_mb()
    row = {"rank": world.rank, "held_mb": round((held + opt_bytes + ef_bytes) / 2**20, 1),
           "params_mb": round(held / 2**20, 1), "optimiser_mb": round(opt_bytes / 2**20, 1),
           "ef_mb": round(ef_bytes / 2**20, 1), "peak_rss_mb": round(max(phase_peak.values()), 1),
           "peak_rss_mb_by_phase": {k: round(v, 1) for k, v in phase_peak.items()},
           "setup_peak_rss_mb": round(setup_rss, 1), "runtime_rss_mb": round(runtime_rss, 1),
           **{k: round(v, 3) for k, v in timings.items()}}
    rows = [None] * world.size
    dist.all_gather_object(rows, row)  # ranks of this benchmark trust each other (no network input)
    if world.main:
        Path(args.out).write_text(json.dumps({
            "nproc": world.size, "device": world.device.type,
            "parameters": sum(math_prod(s) for s in engine.spec.values()),
            "bytes_per_window": len(message), "message_sha256": hashlib.sha256(message).hexdigest(), "ranks": rows}))
    shutdown(world)
    exit_now(0)


def nbytes(t: torch.Tensor) -> int:
    """Bytes this rank holds for ``t`` (a DTensor's local shard, not its global size)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()


def math_prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def main() -> None:
    ap = parser(__doc__, "sharded")
    ap.add_argument("--nproc", default="1,2,4", help="world sizes to measure")
    ap.add_argument("--model", default="150M")
    ap.add_argument("--inner-steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="sequences per inner step (split over the ranks)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--mmap-threshold", type=int, default=131072, metavar="BYTES",
                    help="glibc's MALLOC_MMAP_THRESHOLD_ for the ranks (0: glibc's default, which adapts upwards "
                         "and then keeps freed tensors in the heap, so peak RSS also counts memory already freed)")
    ap.add_argument("--worker", action="store_true", help=argparse_suppress())
    ap.add_argument("--out", help=argparse_suppress())
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    runs = []
    for n in (int(x) for x in args.nproc.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run.json"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", __file__,
                   "--worker", "--out", str(out), "--model", args.model, "--inner-steps", str(args.inner_steps),
                   "--batch", str(args.batch), "--seq", str(args.seq)]
            log(f"{args.model} on {n} rank(s)...")
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, args.threads // n))}
            if args.mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                log(proc.stderr[-3000:])
                raise SystemExit(f"the run on {n} ranks failed")
            r = json.loads(out.read_text())
        ranks = r["ranks"]
        runs.append({"nproc": n, "device": r["device"], "parameters": r["parameters"],
                     "held_mb_per_rank": max(x["held_mb"] for x in ranks),
                     "peak_rss_mb_per_rank": max(x["peak_rss_mb"] for x in ranks),
                     "window_s": max(x["window_s"] for x in ranks), "train_s": max(x["train_s"] for x in ranks),
                     "encode_s": max(x["encode_s"] for x in ranks),
                     "decode_s": max(x["decode_s"] for x in ranks),
                     "decode_apply_s": max(x["decode_apply_s"] for x in ranks),
                     "bytes_per_window": r["bytes_per_window"], "message_sha256": r["message_sha256"], "ranks": ranks})
        log(f"  held {runs[-1]['held_mb_per_rank']} MB/rank, peak RSS {runs[-1]['peak_rss_mb_per_rank']} MB/rank, "
            f"window {runs[-1]['window_s']} s, message {runs[-1]['bytes_per_window']:,} B")
    base = runs[0]
    finish({"benchmark": "sharded", "model": args.model, "inner_steps": args.inner_steps, "batch": args.batch,
            "seq": args.seq, "malloc_mmap_threshold": args.mmap_threshold or "glibc default", "runs": runs,
            "same_bytes_for_every_n": len({r["bytes_per_window"] for r in runs}) == 1,
            "held_vs_first": {str(r["nproc"]): round(r["held_mb_per_rank"] / base["held_mb_per_rank"], 3)
                              for r in runs}}, args)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
