"""Train a tiny Llama with SparseLoCo across processes, through torch.distributed.

    torchrun --nproc_per_node 2 examples/embed_torch_distributed.py

Each rank trains on its own shard of an offline corpus (the Python standard library sources found on
this machine, byte-level tokens) and, every --inner-steps AdamW steps, exchanges a compressed
pseudo-gradient with the other ranks (gloo on CPU, NCCL on GPU). Rank 0 prints the validation loss
after each outer step and a final JSON line; all ranks check that their weights are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sysconfig
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

from gauntlet.config import SparseLoCoConfig
from gauntlet.sparseloco import DiLoCo, SparseLoCo, TorchDistributedTransport, fingerprint


def stdlib_tokens(max_bytes: int) -> torch.Tensor:
    """Bytes of the standard library's .py files, in sorted path order (identical on every rank)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return torch.frombuffer(bytearray(b"".join(chunks)[:max_bytes]), dtype=torch.uint8).long()


def batches(seqs: torch.Tensor, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(seqs), generator=g).split(batch):
            if len(idx) == batch:
                yield seqs[idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("sparseloco", "diloco"), default="sparseloco")
    ap.add_argument("--inner-steps", type=int, default=10, help="H: inner AdamW steps per outer step")
    ap.add_argument("--outer-steps", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3, help="inner AdamW learning rate")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--corpus-bytes", type=int, default=2_000_000)
    ap.add_argument("--topk", type=int, default=64, help="values kept per 64x64 chunk")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))

    tokens = stdlib_tokens(args.corpus_bytes)
    seqs = tokens[: len(tokens) // args.seq * args.seq].view(-1, args.seq)
    n_val = max(args.batch, len(seqs) // 20)
    train, val = seqs[:-n_val], seqs[-n_val:][:32].to(device)
    shard = train[rank::world]  # each rank trains on its own data

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=args.seq, tie_word_embeddings=False,
    )).to(device)
    inner = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    transport = TorchDistributedTransport()
    if args.method == "sparseloco":
        outer = SparseLoCo(model, inner, transport, inner_steps=args.inner_steps,
                           config=SparseLoCoConfig(topk=args.topk), run="embed-example")
    else:
        outer = DiLoCo(model, inner, transport, inner_steps=args.inner_steps)

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        loss = model(input_ids=val, labels=val).loss.item()
        model.train()
        return loss

    initial = val_loss()
    if rank == 0:
        print(f"{args.method}: {world} ranks, {sum(p.numel() for p in model.parameters()):,} parameters, "
              f"H={args.inner_steps}, initial val loss {initial:.4f}", flush=True)
    data = batches(shard, args.batch, args.seed + rank)
    losses = []
    for _ in range(args.outer_steps * args.inner_steps):
        batch = next(data).to(device)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        inner.step()  # the outer loop's hook syncs every H steps
        inner.zero_grad(set_to_none=True)
        report = outer.last_report
        if report is not None and report.outer_step == len(losses):
            losses.append(val_loss())
            if rank == 0:
                print(f"outer step {report.outer_step + 1}/{args.outer_steps} | train loss {loss.item():.4f} | "
                      f"val loss {losses[-1]:.4f} | sent {report.bytes_sent / 1e3:.1f} kB | {report.seconds:.2f} s",
                      flush=True)

    digest = torch.tensor(list(bytes.fromhex(fingerprint(dict(model.named_parameters())))), dtype=torch.uint8,
                          device=device)
    digests = [torch.empty_like(digest) for _ in range(world)]
    dist.all_gather(digests, digest)
    in_sync = all(torch.equal(d, digests[0]) for d in digests)
    if rank == 0:
        print(json.dumps({"method": args.method, "ranks": world, "initial_val_loss": round(initial, 4),
                          "val_loss": [round(x, 4) for x in losses], "final_val_loss": round(losses[-1], 4),
                          "bytes_sent_per_outer_step": outer.last_report.bytes_sent, "in_sync": in_sync}), flush=True)
    dist.destroy_process_group()
    if not in_sync:
        raise SystemExit("ranks ended with different weights")


if __name__ == "__main__":
    main()
