"""Bytes a validator and a peer upload, download and store per window (prints JSON).

    python benchmarks/bandwidth.py [--shapes tiny,150M,1B] [--peers 8,64,256] [--vocab 32000]

For each model shape the objects a window moves are built for real and measured: a peer's signed
SparseLoCo message (a random Δ through error feedback and the codec: its size depends only on the
shapes and the codec), the fingerprint with its weight sample, a validator checkpoint (the signed
fp32 artefact; a dense aggregate, which validators published every window before, has the same
size), a peer list and a replay list naming the aggregated peers. A short lockstep simulation gives
a real window record, whose size per peer is scaled to each number of peers. From these sizes and the
protocol's counts — a validator gathers every peer's message and weight sample; an in-sync peer the
listed peers' (the top G and the reserves); a late peer replaying a window, the G messages of its
replay list — the per-window bytes follow for each number of peers, before (dense aggregate every
window, checkpoint every 10 windows, a node keeping 3 or 13 windows and its last 13 checkpoints)
and now (replay list, checkpoint every ``validator.checkpoint_every`` windows, nodes keeping
``checkpoint_every + 3`` windows and 2 checkpoints). Checkpoints are counted per window (their size
over the interval). The goal: a validator at 1B × 256 peers uploads at most 5 % of what it did.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import finish, log, parser  # noqa: E402

BEFORE_CHECKPOINT_EVERY, BEFORE_PEER_RETAIN, BEFORE_VALIDATOR_RETAIN = 10, 3, 13


def shapes_of(preset: str, vocab: int, seq: int = 1024) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a preset (built on the meta device: no memory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from gauntlet.models import PRESETS

    hidden, inter, layers, heads, kv = PRESETS[preset]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=seq,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def object_sizes(spec: dict[str, tuple[int, ...]], cfg) -> dict[str, int]:
    """Bytes of a message, a fingerprint and a checkpoint at these shapes, each built and encoded."""
    from gauntlet.identity import Identity
    from gauntlet.sparseloco import ErrorFeedback, encode_message
    from peers.network.artefacts import encode_artefact

    ident, g = Identity.from_seed("bandwidth"), torch.Generator().manual_seed(0)
    ef = ErrorFeedback(spec, cfg.sparseloco)
    delta = {n: torch.randn(s, generator=g) for n, s in spec.items()}
    message = len(encode_message(ef.compress(delta), window=1, run="r" * 16, codec=cfg.sparseloco, signer=ident,
                                 extra={"declared": {}}))
    del ef
    sample = [round(float(x), 8) for x in torch.randn(cfg.validator.weight_sample, generator=g)]
    fingerprint = len(json.dumps({"window": 1, "fingerprint": "f" * 64, "sample": sample}).encode())
    checkpoint = len(encode_artefact("checkpoint", delta, run="r" * 16, window=1, signer=ident))
    return {"message": message, "fingerprint": fingerprint, "checkpoint": checkpoint}


def record_model(tmp: Path, path: Path | None = None) -> dict[str, float]:
    """A real window record (``path``, else the last of a short lockstep simulation): its size
    without the peers, and per peer."""
    from peers.cli import main

    if path is None:
        assert main(["simulate", "--out", str(tmp / "sim"), "--data-dir", str(tmp / "data"), "--windows", "3",
                     "--honest", "3", "--quiet"]) == 0
        path = sorted((tmp / "sim").rglob("record.json"))[-1]
    record = json.loads(path.read_text())
    n = len(record["peers"])
    per_peer = sum(len(json.dumps(record[k], separators=(",", ":"))) for k in ("peers", "aggregated", "weights")) / n
    return {"base": path.stat().st_size - per_peer * n, "per_peer": per_peer, "peers_in_sample": n}


def list_sizes(peers: int, cfg) -> dict[str, int]:
    """A peer list (top G and reserves) and a replay list of G messages, with real hotkeys and ids."""
    from gauntlet.identity import Identity
    from peers.network.peer_list import encode_peer_list
    from peers.network.replay import encode_replay

    v = Identity.from_seed("validator")
    hotkeys = sorted(Identity.from_seed(f"p{i}").hotkey for i in range(min(peers, 300)))
    g, reserves = cfg.sparseloco.top_g, cfg.validator.reserves
    listed = hotkeys[: min(peers, g)]
    return {"peer_list": len(encode_peer_list(1, listed, hotkeys[g: g + reserves], run="r" * 16, signer=v)),
            "replay": len(encode_replay(1, [(h, "ab" * 32) for h in listed], "f" * 64, run="r" * 16, signer=v)),
            "replay_open": len(encode_replay(1, [(h, "ab" * 32) for h in hotkeys[:peers]], "f" * 64, run="r" * 16,
                                             signer=v))}


def per_window(size: dict, lists: dict, record: int, peers: int, cfg) -> dict:
    """The per-window figures for one shape and number of peers."""
    g, reserves, k = cfg.sparseloco.top_g, cfg.validator.reserves, cfg.validator.checkpoint_every
    listed, read = min(peers, g), min(peers, g + reserves)
    ckpt = size["checkpoint"]
    before_up = ckpt + lists["peer_list"] + record + ckpt / BEFORE_CHECKPOINT_EVERY
    now_up = lists["replay"] + lists["peer_list"] + record + ckpt / k
    gathered = peers * (size["message"] + size["fingerprint"])
    return {
        "validator_upload_bytes_per_window": round(now_up),
        "validator_upload_bytes_per_window_before": round(before_up),
        "validator_upload_ratio": round(now_up / before_up, 4),
        "validator_download_bytes_per_window": gathered,
        "validator_stored_bytes": round((k + 3) * lists["replay"] + 2 * ckpt),
        "validator_stored_bytes_before": round(BEFORE_VALIDATOR_RETAIN * (ckpt + ckpt)),
        "validator_stored_growth_per_window": lists["peer_list"] + record,  # records and lists are kept
        "peer_upload_bytes_per_window": size["message"] + size["fingerprint"],
        "peer_download_bytes_per_window": read * size["message"] + lists["peer_list"],
        "late_peer_download_bytes_per_replayed_window": listed * size["message"] + lists["replay"],
        "late_peer_download_bytes_per_replayed_window_before": ckpt,
        "peer_stored_bytes": (k + 3) * (size["message"] + size["fingerprint"]),
        "peer_stored_bytes_before": BEFORE_PEER_RETAIN * (size["message"] + size["fingerprint"]),
    }


def main() -> None:
    ap = parser(__doc__, "bandwidth")
    ap.add_argument("--shapes", default="tiny,150M,1B")
    ap.add_argument("--peers", default="8,64,256")
    ap.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000, a Llama tokenizer's)")
    ap.add_argument("--record", type=Path, help="a validator's record.json to scale (default: run a short simulation)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from gauntlet.config import GauntletConfig

    cfg = GauntletConfig()
    counts = [int(x) for x in args.peers.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        if args.record is None:
            log("a short lockstep simulation for a real window record ...")
        rec = record_model(Path(tmp), args.record)
    results = {}
    for shape in args.shapes.split(","):
        spec = shapes_of(shape, args.vocab)
        params = sum(int(torch.Size(s).numel()) for s in spec.values())
        log(f"{shape}: {params / 1e6:.0f}M parameters: encoding a message and a checkpoint ...")
        size = object_sizes(spec, cfg)
        results[shape] = {"parameters": params, "objects": size, "by_peers": {}}
        for peers in counts:
            lists = list_sizes(peers, cfg)
            record = round(rec["base"] + rec["per_peer"] * peers)
            results[shape]["by_peers"][str(peers)] = {"record_bytes": record, **lists,
                                                      **per_window(size, lists, record, peers, cfg)}
    big = results.get("1B", {}).get("by_peers", {}).get("256")
    out = {"vocab": args.vocab, "top_g": cfg.sparseloco.top_g, "reserves": cfg.validator.reserves,
           "checkpoint_every": cfg.validator.checkpoint_every, "checkpoint_every_before": BEFORE_CHECKPOINT_EVERY,
           "record_model": {k: round(v, 1) for k, v in rec.items()}, "results": results,
           "wall_s": round(time.monotonic() - started, 1)}
    if big:
        out["validator_upload_bytes_per_window"] = big["validator_upload_bytes_per_window"]
        out["validator_upload_bytes_per_window_before"] = big["validator_upload_bytes_per_window_before"]
        out["goal"] = "1B x 256 peers: validator upload per window <= 5% of before"
        out["goal_met"] = big["validator_upload_ratio"] <= 0.05
    finish(out, args)


if __name__ == "__main__":
    main()
