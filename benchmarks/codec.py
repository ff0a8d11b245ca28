"""Codec throughput and size on a fixed Llama-style workload (prints one JSON line with --json).

Workload: the 2-D weights of a Llama-style model with hidden 1024, FFN 2816 and 8 layers (per layer
4 × 1024×1024, 2 × 2816×1024, 1 × 1024×2816: ≈102.8M fp32 parameters), Δ ~ N(0, 1e-3²), β = 0.95,
64×64 chunks, k = 64, 2-bit codes.

- encode: error-feedback update + top-k + quantise + self-decode for all tensors, then the signed
  wire message (Mparam/s).
- decode: validate 8 peers' messages from bytes (``decode_message`` with the model spec and the
  signature check), then aggregate them with median clipping (Mparam·peer/s).
- bytes_per_param: size of one whole message (headers included) / parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gauntlet.config import SparseLoCoConfig  # noqa: E402
from gauntlet.identity import Identity  # noqa: E402
from gauntlet.sparseloco import ErrorFeedback, aggregate, decode_message, encode_message  # noqa: E402


def workload_shapes(hidden: int = 1024, ffn: int = 2816, layers: int = 8) -> dict[str, tuple[int, int]]:
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(layers):
        for proj in ("q", "k", "v", "o"):
            shapes[f"layers.{i}.attn.{proj}.weight"] = (hidden, hidden)
        shapes[f"layers.{i}.mlp.gate.weight"] = (ffn, hidden)
        shapes[f"layers.{i}.mlp.up.weight"] = (ffn, hidden)
        shapes[f"layers.{i}.mlp.down.weight"] = (hidden, ffn)
    return shapes


def machine() -> str:
    """CPU model and core count (GPU name when CUDA is present)."""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def run(peers: int, repeats: int, device: str, bits: int) -> dict:
    torch.manual_seed(0)
    cfg = SparseLoCoConfig(quant_bits=bits)
    shapes = workload_shapes()
    params = sum(a * b for a, b in shapes.values())
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    senders = [Identity.from_seed(f"peer-{p}") for p in range(peers)]

    def random_delta(seed: int) -> dict[str, torch.Tensor]:
        g = torch.Generator(device=device).manual_seed(seed)
        return {n: torch.randn(s, device=device, generator=g) * 1e-3 for n, s in shapes.items()}

    messages = []  # every peer has its own Δ (and so its own indices)
    for p in range(peers):
        ef = ErrorFeedback(shapes, cfg, device)
        messages.append(encode_message(ef.compress(random_delta(p)), window=0, run="bench", codec=cfg,
                                       signer=senders[p]))
    del ef

    ef = ErrorFeedback(shapes, cfg, device)
    deltas = random_delta(peers)
    encode_times = []
    for r in range(repeats + 1):  # the first round warms up and fills the residual
        sync()
        t0 = time.perf_counter()
        cts = ef.compress(deltas)
        msg = encode_message(cts, window=r + 1, run="bench", codec=cfg, signer=senders[0])
        sync()
        encode_times.append(time.perf_counter() - t0)
    encode_times = encode_times[1:]

    decode_times = []
    for _ in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        decoded = [decode_message(m, spec=shapes, expected_run="bench").tensors for m in messages]
        agg = aggregate(decoded, combine="mean", clip_to_median=True)
        sync()
        decode_times.append(time.perf_counter() - t0)
        del agg, decoded

    enc, dec = min(encode_times), min(decode_times[1:])
    return {
        "benchmark": "codec",
        "params": params,
        "peers": peers,
        "quant_bits": bits,
        "device": device,
        "encode_s": round(enc, 4),
        "decode_s": round(dec, 4),
        "encode_mparam_s": round(params / enc / 1e6, 1),
        "decode_mparam_peer_s": round(params * peers / dec / 1e6, 1),
        "bytes_per_message": len(msg),
        "bytes_per_param": round(len(msg) / params, 5),
        "fp32_ratio": round(4 * params / len(msg), 1),
        "threads": torch.get_num_threads(),
        "machine": machine(),
        "torch": torch.__version__,
        "date": date.today().isoformat(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON line (default: pretty JSON)")
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is reported")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bits", type=int, default=2, choices=(2, 4, 8))
    ap.add_argument("--device", default="cpu", help="cpu, or cuda when a GPU is present")
    ap.add_argument("--save", type=Path, help="also write the result to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.peers, args.repeats, args.device, args.bits)
    text = json.dumps(result) if args.json else json.dumps(result, indent=2)
    print(text)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
