"""SparseLoCo inside a sharded trainer: replicas × shards, HSDP style, with FSDP2.

    torchrun --nproc_per_node 4 examples/embed_fsdp.py --shards 2     # 2 replicas × 2 shards

The ranks form a 2-D mesh ``(replicate, shard)``. Each replica is ``--shards`` ranks holding one copy
of a tiny Llama, sharded over them by ``fully_shard``; a replica trains on its own slice of an offline
corpus (the Python standard library, byte tokens), each of its ranks on an equal share of every batch.
Replicas never exchange gradients: every ``--inner-steps`` AdamW steps the SparseLoCo wrapper
compresses the pseudo-gradient and each rank swaps *its part* of its replica's message with the
ranks of the same shard index in the other replicas. ``--shards 1`` runs the same training on the
unsharded wrapper (one process per replica) for comparison. Rank 0 prints the validation loss after
each outer step and a final JSON line; the run fails if the replicas' weights differ by one bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from embed_torch_distributed import batches, stdlib_tokens  # noqa: E402

from gauntlet.config import SparseLoCoConfig  # noqa: E402
from gauntlet.parallel.fsdp import shard_model  # noqa: E402
from gauntlet.sparseloco import SparseLoCo, TorchDistributedTransport  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=2, help="ranks per replica (the model is sharded over them)")
    ap.add_argument("--inner-steps", type=int, default=10, help="H: inner AdamW steps per outer step")
    ap.add_argument("--outer-steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-3, help="inner AdamW learning rate")
    ap.add_argument("--batch", type=int, default=8, help="sequences per replica per inner step")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--corpus-bytes", type=int, default=2_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, help="write the final weights here (safetensors, from rank 0)")
    args = ap.parse_args()

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    if world % args.shards or args.batch % args.shards:
        raise SystemExit(f"{world} ranks and batches of {args.batch} must both split into --shards {args.shards}")
    replicas = world // args.shards
    replica, shard = rank // args.shards, rank % args.shards

    tokens = stdlib_tokens(args.corpus_bytes)
    seqs = tokens[: len(tokens) // args.seq * args.seq].view(-1, args.seq)
    n_val = max(args.batch, len(seqs) // 20)
    train, val = seqs[:-n_val], seqs[-n_val:][:32].to(device)

    torch.manual_seed(args.seed)  # identical initial weights on every rank
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=args.seq, tie_word_embeddings=False,
    )).to(device)
    config = SparseLoCoConfig()
    if args.shards > 1:
        mesh = init_device_mesh(device.type, (replicas, args.shards), mesh_dim_names=("replicate", "shard"))
        shard_model(model, mesh["shard"])  # FSDP2 within the replica only
        inner = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
        outer = SparseLoCo(model, inner, mesh=mesh, inner_steps=args.inner_steps, config=config, run="fsdp-example")
    else:
        inner = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
        outer = SparseLoCo(model, inner, TorchDistributedTransport(), inner_steps=args.inner_steps, config=config,
                           run="fsdp-example")

    @torch.no_grad()
    def val_loss() -> float:  # every rank of a replica runs it: FSDP's forward is collective
        model.eval()
        loss = model(input_ids=val, labels=val).loss.item()
        model.train()
        return loss

    initial = val_loss()
    if rank == 0:
        print(f"{replicas} replicas x {args.shards} shards, {sum(p.numel() for p in model.parameters()):,} "
              f"parameters, H={args.inner_steps}, initial val loss {initial:.4f}", flush=True)
    per = args.batch // args.shards
    data = batches(train[replica::replicas], args.batch, args.seed + replica)  # the replica's data
    losses = []
    for _ in range(args.outer_steps * args.inner_steps):
        batch = next(data)[shard * per:(shard + 1) * per].to(device)  # this rank's share of the batch
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        inner.step()  # the outer loop's hook syncs every H steps
        inner.zero_grad(set_to_none=True)
        report = outer.last_report
        if report is not None and report.outer_step == len(losses):
            losses.append(val_loss())
            if rank == 0:
                print(f"outer step {report.outer_step + 1}/{args.outer_steps} | val loss {losses[-1]:.4f} | "
                      f"sent {report.bytes_sent / 1e3:.1f} kB, received {report.bytes_received / 1e3:.1f} kB | "
                      f"{report.seconds:.2f} s", flush=True)

    whole = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().contiguous()
             for n, p in model.named_parameters()}  # every rank of a replica gathers the whole weights
    digest = hashlib.sha256(b"".join(whole[n].view(torch.uint8).numpy().tobytes() for n in sorted(whole))).digest()
    mine = torch.tensor(list(digest), dtype=torch.uint8, device=device)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine)
    in_sync = all(torch.equal(d, everyone[0]) for d in everyone)
    if rank == 0:
        if args.save:
            save_file(whole, args.save)
        print(json.dumps({"replicas": replicas, "shards": args.shards, "initial_val_loss": round(initial, 4),
                          "val_loss": [round(x, 4) for x in losses], "final_val_loss": round(losses[-1], 4),
                          "bytes_sent_per_outer_step": outer.last_report.bytes_sent, "in_sync": in_sync}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    if not in_sync:
        raise SystemExit("replicas ended with different weights")
    sys.stdout.flush()
    os._exit(0)  # past gloo's teardown at interpreter exit (pytorch/pytorch#179291)


if __name__ == "__main__":
    main()
