"""Message upload and gather throughput against an S3 server on loopback.

For each model shape (default ``small`` and ``150M``, byte tokens), P peers (default 8) each encode
a signed SparseLoCo message of a random Δ and upload it to their own bucket. Then one node gathers
all P messages the way a validator or peer does — read the object (HEAD with the size check, then
GET), decode and fully validate it (signature, sizes, indices, lookups) — first one after another,
then with a pool of W threads (default 8, the nodes' default).

The server is moto's S3 server started in its own process on 127.0.0.1 (a pure-Python server: a
lower bound on what a real S3 endpoint does), or any S3 endpoint given with ``--endpoint`` and
credentials in the usual AWS_* variables. Reported: seconds and MB/s for the uploads, the
sequential gather and the concurrent gather, and how much of the gather was decoding.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import finish, log, parser  # noqa: E402
from gauntlet.config import ModelConfig, SparseLoCoConfig  # noqa: E402
from gauntlet.identity import Identity  # noqa: E402
from gauntlet.models import build_model  # noqa: E402
from gauntlet.sparseloco import ErrorFeedback, decode_message, encode_message  # noqa: E402
from gauntlet.storage import keys  # noqa: E402
from gauntlet.storage.s3_store import S3Store  # noqa: E402

RUN = "bench"


def start_moto() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process on a free loopback port (so that it does not share this
    process's interpreter lock with the client threads); fake credentials set for this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(var, value)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("moto's S3 server did not start within 30 s (is moto[server] installed?)")


def shapes_of(preset: str) -> dict[str, tuple[int, ...]]:
    model = build_model(ModelConfig(preset=preset, device="cpu"), 256, 128, seed=0)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def make_messages(shapes: dict[str, tuple[int, ...]], peers: list[Identity], window: int) -> list[bytes]:
    cfg = SparseLoCoConfig()
    out = []
    for i, peer in enumerate(peers):
        g = torch.Generator().manual_seed(i)
        delta = {n: torch.randn(s, generator=g) * 1e-3 for n, s in shapes.items()}
        out.append(encode_message(ErrorFeedback(shapes, cfg).compress(delta), window=window, run=RUN, codec=cfg,
                                  signer=peer))
    return out


def gather(stores: list[S3Store], peers: list[Identity], shapes: dict, window: int, workers: int,
           max_bytes: int) -> tuple[float, float, int]:
    """Read and validate every peer's message; (wall s, s spent decoding summed over peers, bytes)."""

    def one(store: S3Store, peer: Identity) -> tuple[float, int]:
        data, _ = store.read(keys.message(RUN, window, peer.hotkey), max_bytes=max_bytes)
        t0 = time.perf_counter()
        decode_message(data, spec=shapes, expected_window=window, expected_run=RUN, expected_hotkey=peer.hotkey,
                       expected_codec=SparseLoCoConfig(), max_bytes=max_bytes)
        return time.perf_counter() - t0, len(data)

    t0 = time.perf_counter()
    if workers <= 1:
        results = [one(s, p) for s, p in zip(stores, peers)]
    else:
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, stores, peers))
    return time.perf_counter() - t0, sum(r[0] for r in results), sum(r[1] for r in results)


def bench_shape(preset: str, endpoint: str, peers: int, workers: int, repeats: int) -> dict:
    log(f"{preset}: building {peers} messages")
    shapes = shapes_of(preset)
    ids = [Identity.from_seed(f"storage-bench-{i}") for i in range(peers)]
    tag = uuid.uuid4().hex[:8]
    stores = [S3Store(f"bench-{tag}-{i}", endpoint_url=endpoint, region="us-east-1") for i in range(peers)]
    for store in stores:
        store.create_bucket()
    messages = make_messages(shapes, ids, window=0)
    size = len(messages[0])
    upload, seq, conc = [], [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        for store, peer, data in zip(stores, ids, messages):
            store.put(keys.message(RUN, r, peer.hotkey), data)
        upload.append(time.perf_counter() - t0)
    # messages are signed for window 0: gather that window
    for store, peer, data in zip(stores, ids, messages):
        store.put(keys.message(RUN, 0, peer.hotkey), data)
    gather(stores, ids, shapes, 0, workers, 4 * size)  # warm-up: connections, caches
    for _ in range(repeats):
        seq.append(gather(stores, ids, shapes, 0, 1, 4 * size))
        conc.append(gather(stores, ids, shapes, 0, workers, 4 * size))
    total = peers * size
    best_seq = min(seq, key=lambda x: x[0])
    best_conc = min(conc, key=lambda x: x[0])
    log(f"{preset}: upload {min(upload):.2f} s, gather sequential {best_seq[0]:.2f} s, "
        f"concurrent {best_conc[0]:.2f} s")
    return {
        "parameters": sum(torch.Size(s).numel() for s in shapes.values()),
        "message_bytes": size,
        "peers": peers,
        "upload_s": round(min(upload), 3),
        "upload_mb_s": round(total / min(upload) / 1e6, 1),
        "upload_s_per_message": round(min(upload) / peers, 4),
        "gather_sequential_s": round(best_seq[0], 3),
        "gather_sequential_mb_s": round(total / best_seq[0] / 1e6, 1),
        "gather_concurrent_s": round(best_conc[0], 3),
        "gather_concurrent_mb_s": round(total / best_conc[0] / 1e6, 1),
        "gather_speedup": round(best_seq[0] / best_conc[0], 2),
        "decode_share_sequential": round(best_seq[1] / best_seq[0], 2),
        "gather_sequential_all_s": [round(x[0], 3) for x in seq],
        "gather_concurrent_all_s": [round(x[0], 3) for x in conc],
        "upload_all_s": [round(x, 3) for x in upload],
    }


def main() -> None:
    ap = parser(__doc__, "storage")
    ap.add_argument("--models", default="small,150M", help="model presets whose shapes the messages have")
    ap.add_argument("--peers", type=int, default=8)
    ap.add_argument("--workers", type=int, default=8, help="threads of the concurrent gather")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is reported")
    ap.add_argument("--endpoint", help="an S3 endpoint URL instead of the embedded moto server")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    server, endpoint = (None, args.endpoint) if args.endpoint else start_moto()
    try:
        shapes = {m: bench_shape(m, endpoint, args.peers, args.workers, args.repeats) for m in args.models.split(",")}
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    finish({"benchmark": "storage", "server": "moto's S3 server (own process) on 127.0.0.1" if server else endpoint,
            "workers": args.workers, "shapes": shapes}, args)


if __name__ == "__main__":
    main()
