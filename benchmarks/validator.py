"""Validator costs at production size (prints one JSON line with --json).

For P = 8 … 256 peers of a model's shapes (``small``, ``150M``, ``1B``; no model is built for them):

- ``copy_detection_s``: the validator's copy detection over P stored messages — draw the window's
  chunk sample, read each message's header and sampled bytes from its file (memory-mapped, as the
  validator reads its spool), compare every pair, name the offenders. Page cache warm (best of
  ``--repeats``); ``copy_detection_cold_s`` the same after evicting the files from the page cache.
- ``peak_rss_mb_by_peers``: peak resident memory of that timed part (a fresh process per P, so
  nothing else counts; ``baseline_rss_mb`` is the process after its imports).
- ``gather_peak_rss_mb_by_peers`` / ``gather_s``: a window's gather as the validator runs it —
  read every message from the store, validate it completely (structure, signature, payload hash,
  contents; at most two decodes at a time), write it to a spool folder and keep only its header.

The messages are real wire-format messages written once to a file:// store (``--store``; reused
when present): two encoder outputs of random Δs, and for every peer one of them with its chunks
permuted (a different top-k pattern per peer, as independent peers have), signed by the peer's own
hotkey. Two copiers are planted (peers 2 and 5 send the messages of peers 0 and 1, re-signed); every
timed run must name exactly them. ``--loss-test`` (default for ``tiny``/``small``) also times one
peer's loss test in forward passes (docs/protocol.md §4: three passes per peer).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, finish, log, parser  # noqa: E402
from gauntlet.config import ModelConfig, SparseLoCoConfig, ValidatorConfig  # noqa: E402
from gauntlet.identity import Identity  # noqa: E402
from gauntlet.sparseloco import ErrorFeedback, decode_message, encode_message  # noqa: E402
from gauntlet.sparseloco.compress import CompressedTensor  # noqa: E402
from gauntlet.storage import FileStore, keys  # noqa: E402
from gauntlet.uniqueness import find_copies  # noqa: E402
from gauntlet.uniqueness.copying import pair_stats  # noqa: E402
from gauntlet.uniqueness.sampled import draw_sample, read_sample, sample_seed  # noqa: E402

VOCAB = {"tiny": 256, "small": 256, "150M": 32000, "1B": 65536}  # byte tokens for the small ones (as before)
RUN, WINDOW = "bench-validator", 5
COPIES = {2: 0, 5: 1}  # copier -> the peer whose message it re-sends


def peak_rss_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def model_spec(preset: str) -> dict[str, tuple[int, ...]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from gauntlet.models import PRESETS

    hidden, inter, layers, heads, kv = PRESETS[preset]
    config = LlamaConfig(vocab_size=VOCAB[preset], hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                         max_position_embeddings=128, tie_word_embeddings=False)
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = LlamaForCausalLM(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def identity(i: int) -> Identity:
    return Identity.from_seed(f"bench-validator-peer-{i}")


# ------------------------------------------------------------------------------------ the messages


def base_update(spec, cfg: SparseLoCoConfig, seed: int) -> dict[str, CompressedTensor]:
    """One encoder output of a random Δ, built tensor by tensor (memory of one tensor at a time)."""
    g = torch.Generator().manual_seed(seed)
    return {n: ErrorFeedback({n: s}, cfg).compress({n: torch.randn(s, generator=g)})[n] for n, s in spec.items()}


def _within(side: int, valid: int, g: torch.Generator) -> torch.Tensor:
    """A permutation of ``range(side)`` that maps ``range(valid)`` onto itself."""
    return torch.cat([torch.randperm(valid, generator=g), valid + torch.randperm(side - valid, generator=g)])


def permuted(update: dict[str, CompressedTensor], seed: int) -> dict[str, CompressedTensor]:
    """The same update as another peer's top-k pattern, still a valid message: the rows and columns
    inside every tile are permuted (valid ones among valid ones: the last tile-row/column may be
    padded) and chunks move among chunks with the same padding."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, ct in update.items():
        lay = ct.layout
        if not lay.sparse or len(lay.shape) == 1:
            out[name] = ct
            continue
        rows = _within(lay.side_r, lay.rows - (lay.tiles_r - 1) * lay.side_r, g)
        cols = _within(lay.side_c, lay.cols - (lay.tiles_c - 1) * lay.side_c, g)
        idx, order = (rows[ct.idx // lay.side_c] * lay.side_c + cols[ct.idx % lay.side_c]).sort(dim=1)
        codes = ct.codes.gather(1, order)
        grid = torch.arange(lay.num_chunks)
        kind = (grid // lay.tiles_c == lay.tiles_r - 1).long() * 2 + (grid % lay.tiles_c == lay.tiles_c - 1).long()
        shuffle = grid.clone()
        for k in kind.unique().tolist():
            members = (kind == k).nonzero().view(-1)
            shuffle[members] = members[torch.randperm(members.numel(), generator=g)]
        out[name] = CompressedTensor(lay, idx=idx[shuffle], codes=codes[shuffle], lookup=ct.lookup)
    return out


def build_store(root: Path, preset: str, spec, cfg: SparseLoCoConfig, peers: int) -> dict:
    """Write ``peers`` messages once (reused when the manifest matches)."""
    manifest = {"preset": preset, "vocab": VOCAB[preset], "peers": peers, "copies": {str(k): v for k, v in
                                                                                     COPIES.items()},
                "codec": cfg.model_dump(mode="json"), "v": 3}
    path = root / "manifest.json"
    if path.exists() and json.loads(path.read_text()) == manifest:
        log(f"{preset}: reusing {peers} messages in {root}")
        return manifest
    shutil.rmtree(root, ignore_errors=True)
    store = FileStore(root)
    t0 = time.perf_counter()
    bases = [base_update(spec, cfg, seed) for seed in (1, 2)]
    for i in range(peers):
        update = permuted(bases[COPIES.get(i, i) % 2], seed=1000 + COPIES.get(i, i))
        data = encode_message(update, window=WINDOW, run=RUN, codec=cfg, signer=identity(i))
        store.put(keys.message(RUN, WINDOW, identity(i).hotkey), data)
        if i % 32 == 31 or i == peers - 1:
            log(f"{preset}: wrote {i + 1}/{peers} messages of {len(data):,} bytes ({time.perf_counter() - t0:.0f} s)")
    path.write_text(json.dumps(manifest))
    return manifest


def message_files(root: Path, count: int) -> list[tuple[str, Path]]:
    store = FileStore(root)
    return [(identity(i).hotkey, store.root / keys.message(RUN, WINDOW, identity(i).hotkey)) for i in range(count)]


# ------------------------------------------------------------------------------- the timed parts


def copy_detection(files: list[tuple[str, Path]], spec, cfg: SparseLoCoConfig, chunks: int) -> list[tuple[str, str]]:
    """What the validator does after its gather: sample, read the sampled bytes, compare, decide."""
    sample = draw_sample(spec, cfg, chunks, sample_seed(b"bench-secret", WINDOW))
    def one(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return read_sample(mm, 8 + int.from_bytes(mm[:8], "little"), sample)

    with cf.ThreadPoolExecutor(4) as pool:  # as peers/validator.py: page faults overlap
        pairs = list(pool.map(one, [p for _, p in files]))
    stats = pair_stats(torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs]))
    hotkeys = [h for h, _ in files]
    times = {h: float(i) for i, h in enumerate(hotkeys)}
    v = ValidatorConfig()
    found = find_copies(hotkeys, stats, times, threshold=v.copy_threshold, value_similarity=v.copy_value_similarity)
    return sorted((f.offender, f.original) for f in found)


def evict(files) -> None:
    for _, path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def gather_to_spool(root: Path, files, spec, cfg: SparseLoCoConfig, spool: Path) -> int:
    """The validator's gather: read, validate completely, spool, keep the header (peers/network/gather.py)."""
    registered = {h for h, _ in files}
    decoding = threading.BoundedSemaphore(2)
    store = FileStore(root, read_only=True)

    def one(hotkey: str):
        data, _ = store.read(keys.message(RUN, WINDOW, hotkey), max_bytes=1 << 30)
        assert hotkey in registered
        with decoding:
            message = decode_message(data, spec=spec, expected_window=WINDOW, expected_run=RUN,
                                     expected_hotkey=hotkey, expected_codec=cfg)
        target = spool / f"{hotkey}.msg"
        target.write_bytes(message.raw)
        return message.header

    with cf.ThreadPoolExecutor(8) as pool:
        headers = list(pool.map(one, [h for h, _ in files]))
    return len(headers)


def stored_spec(store: Path) -> dict[str, tuple[int, ...]]:
    """The shapes the parent wrote beside the messages (a child then needs no model code at all)."""
    return {n: tuple(s) for n, s in json.loads((store.parent / "spec.json").read_text()).items()}


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    spec, cfg = stored_spec(args.store), SparseLoCoConfig()
    files = message_files(args.store, args.count)
    baseline = peak_rss_mb()
    out: dict = {"baseline_rss_mb": baseline}
    if args.child == "copy":
        best, found = float("inf"), None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            found = copy_detection(files, spec, cfg, args.chunks)
            best = min(best, time.perf_counter() - t0)
        expected = sorted((identity(c).hotkey, identity(o).hotkey) for c, o in COPIES.items() if c < args.count)
        out.update(seconds=round(best, 3), found_planted=found == expected, findings=len(found))
        if args.cold:
            evict(files)
            t0 = time.perf_counter()
            copy_detection(files, spec, cfg, args.chunks)
            out["cold_seconds"] = round(time.perf_counter() - t0, 3)
    else:
        spool = Path(tempfile.mkdtemp(prefix="spool-", dir=args.store.parent))
        try:
            t0 = time.perf_counter()
            gather_to_spool(args.store, files, spec, cfg, spool)
            out["seconds"] = round(time.perf_counter() - t0, 2)
        finally:
            shutil.rmtree(spool, ignore_errors=True)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out), flush=True)


def in_child(args, mode: str, count: int, cold: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--count", str(count), "--store",
           str(args.store), "--threads", str(args.threads), "--repeats", str(args.repeats), "--chunks",
           str(args.chunks)] + (["--cold"] if cold else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} with {count} peers failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def loss_test_cost(preset: str, seq_len: int, sequences: int, repeats: int) -> dict:
    from gauntlet.models import build_model, mean_loss
    from gauntlet.scoring import loss_test

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=preset, device="cpu"), VOCAB[preset], seq_len, seed=0)
    own = [torch.randint(0, VOCAB[preset], (sequences, seq_len))]
    rand = [torch.randint(0, VOCAB[preset], (sequences, seq_len))]
    update = {n: torch.randn(p.shape) * 1e-3 for n, p in model.named_parameters()}
    forward = best(lambda: mean_loss(model, own))
    rand_before = mean_loss(model, rand)
    one_peer = best(lambda: loss_test(model, update, 0.2, own, rand, rand_before))
    log(f"{preset}: one forward {forward:.3f} s, one loss test {one_peer:.3f} s")
    return {"eval_sequences": sequences, "seq_len": seq_len, "forward_s": round(forward, 4),
            "loss_test_s": round(one_peer, 4), "eval_cost_forward_passes": round(one_peer / forward, 2)}


def run(args) -> dict:
    spec, cfg = model_spec(args.model), SparseLoCoConfig()
    peers = [int(p) for p in args.peers.split(",")]
    gather_peers = [int(p) for p in args.gather_peers.split(",")] if args.gather_peers else peers
    manifest = build_store(args.store, args.model, spec, cfg, max(peers + gather_peers))
    (args.store.parent / "spec.json").write_text(json.dumps(spec))
    size = message_files(args.store, 1)[0][1].stat().st_size
    copies, memory, base, cold, gathers, gather_mem = {}, {}, None, {}, {}, {}
    for count in peers:
        r = in_child(args, "copy", count, cold=count == max(peers))
        if not r["found_planted"]:
            raise SystemExit(f"copy detection over {count} peers did not name exactly the planted copiers: {r}")
        copies[str(count)], memory[str(count)], base = r["seconds"], r["peak_rss_mb"], r["baseline_rss_mb"]
        if "cold_seconds" in r:
            cold[str(count)] = r["cold_seconds"]
        log(f"{args.model}: copy detection over {count} peers {r['seconds']} s (warm), peak RSS {r['peak_rss_mb']} MB")
    for count in gather_peers:
        r = in_child(args, "gather", count)
        gathers[str(count)], gather_mem[str(count)] = r["seconds"], r["peak_rss_mb"]
        log(f"{args.model}: gather of {count} peers {r['seconds']} s, peak RSS {r['peak_rss_mb']} MB")
    sample = draw_sample(spec, cfg, args.chunks, 0)
    result = {
        "benchmark": "validator", "model": args.model, "vocab": manifest["vocab"],
        "parameters": sum(torch.Size(s).numel() for s in spec.values()), "message_bytes": size,
        "sample_chunks": sample.chunks, "total_chunks": sample.total_chunks,
        "copy_detection_s": copies, "copy_detection_cold_s": cold, "page_cache": "warm (cold: files evicted first)",
        "peak_rss_mb_by_peers": memory, "baseline_rss_mb": base, "peak_rss_mb": max(memory.values()),
        "gather_s": gathers, "gather_peak_rss_mb_by_peers": gather_mem,
        "store_bytes": size * max(peers + gather_peers),
    }
    if args.loss_test:
        result.update(loss_test_cost(args.model, args.seq_len, args.sequences, args.repeats))
    return result


def main() -> None:
    ap = parser(__doc__, "validator_small")
    ap.add_argument("--model", default="small", choices=sorted(VOCAB))
    ap.add_argument("--peers", default="8,16,32,64,128,256")
    ap.add_argument("--gather-peers", default=None, help="peer counts for the gather's memory (default: --peers)")
    ap.add_argument("--chunks", type=int, default=ValidatorConfig().copy_sample_chunks,
                    help="chunks sampled (0: every chunk)")
    ap.add_argument("--store", type=Path, default=None,
                    help="where the messages are written (default: a folder under the system's temp dir)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loss-test", action=argparse.BooleanOptionalAction, default=None,
                    help="also time one peer's loss test (default: for tiny and small)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--sequences", type=int, default=8, help="eval sequences (own, and random)")
    ap.add_argument("--child", choices=["copy", "gather"], help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.store is None:
        args.store = Path(tempfile.gettempdir()) / f"gauntlet-bench-validator-{args.model}" / "store"
    if args.child:
        child(args)
        return
    if args.save == RESULTS / "validator_small.json":
        args.save = RESULTS / f"validator_{args.model}.json"
    if args.loss_test is None:
        args.loss_test = args.model in ("tiny", "small")
    torch.set_num_threads(args.threads)
    finish(run(args), args)


if __name__ == "__main__":
    main()
