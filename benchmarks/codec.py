"""Codec throughput and size on a fixed Llama-style workload (prints one JSON line with --json).

Workload: the 2-D weights of a Llama-style model with hidden 1024, FFN 2816 and 8 layers (per layer
4 × 1024×1024, 2 × 2816×1024, 1 × 1024×2816: ≈102.8M fp32 parameters), Δ ~ N(0, 1e-3²), β = 0.95,
64×64 chunks, k = 64, 2-bit codes.

- encode: error-feedback update + top-k + quantise + self-decode for all tensors, then the signed
  wire message (Mparam/s).
- decode: validate 8 peers' messages from bytes (``decode_message`` with the model spec and the
  signature check), then aggregate them with median clipping (Mparam·peer/s).
- bytes_per_param: size of one whole message (headers included) / parameters.

On a machine with CUDA, ``--device auto`` (the default) also times both on the GPU (under "cuda";
messages are decoded from bytes on the CPU, as a node does, then moved to the GPU to aggregate).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, finish, log, parser  # noqa: E402
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
        decoded = [{n: ct.to(device) for n, ct in decode_message(m, spec=shapes, expected_run="bench").tensors.items()}
                   for m in messages]
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
    }


def main() -> None:
    ap = parser(__doc__, "codec")
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is reported")
    ap.add_argument("--bits", type=int, default=2, choices=(2, 4, 8))
    ap.add_argument("--device", default="auto",
                    help="cpu, cuda, or auto: the CPU, and also CUDA when a GPU is present")
    args = ap.parse_args()
    if args.bits != 2 and args.save == RESULTS / "codec.json":
        args.save = RESULTS / f"codec_{args.bits}bit.json"
    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else [args.device]
    devices = ["cpu" if d == "auto" else d for d in devices]
    runs = {}
    for device in devices:
        log(f"codec on {device}: {args.peers} peers, {args.bits}-bit")
        runs[device] = run(args.peers, args.repeats, device, args.bits)
    result = dict(runs[devices[0]])
    if len(devices) > 1:  # the CPU figures at the top level, as before; the GPU's beside them
        result["cuda"] = {k: v for k, v in runs["cuda"].items() if k not in ("benchmark", "params", "peers")}
    finish(result, args)


if __name__ == "__main__":
    main()
