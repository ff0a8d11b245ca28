"""Run under torchrun: every rank compresses its Shard(0) rows of fully_shard-ed parameters with the
sharded codec (gloo collectives); rank 0 writes the messages to OUT (one file per window)."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from gauntlet.config import SparseLoCoConfig
from gauntlet.parallel.comm import TorchShardComm
from gauntlet.parallel.fsdp import check_sharding, local_tensors
from gauntlet.parallel.world import exit_now
from gauntlet.sparseloco import encode_message
from gauntlet.sparseloco.sharding import ShardedErrorFeedback

SHAPES = {"a.weight": (100, 96), "b.weight": (130, 7, 10), "c.weight": (5, 4096), "d.bias": (300,),
          "e.weight": (64, 64), "f.tiny": (3, 5), "g.weight": (688, 256)}
WINDOWS = 3


def model() -> torch.nn.Module:
    m = torch.nn.Module()
    g = torch.Generator().manual_seed(0)
    for name, shape in SHAPES.items():
        m.register_parameter(name.replace(".", "_"), torch.nn.Parameter(torch.randn(shape, generator=g)))
    return m


def deltas(window: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + window)
    return {n: torch.randn(s, generator=g) * (1 + window) for n, s in SHAPES.items()}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    m = model()
    whole = {n: p.detach().clone() for n, p in m.named_parameters()}
    fully_shard(m, mesh=init_device_mesh("cpu", (world,)))
    params = {n.replace("_", ".", 1): p for n, p in m.named_parameters()}
    check_sharding(params, world, rank)
    local = local_tensors(params)
    cfg = SparseLoCoConfig()
    ef = ShardedErrorFeedback({n: p.shape for n, p in params.items()}, cfg, TorchShardComm())
    rows = ef.local_rows()
    for n, t in local.items():  # the shards are the rows the plan says, holding the parameter's values
        assert torch.equal(t, whole[n.replace(".", "_", 1)][slice(*rows[n])]), n
    for w in range(WINDOWS):
        with torch.no_grad():  # θ_H = θ₀ − Δ on every shard; the codec sees this rank's rows of Δ only
            anchor = {n: t.clone() for n, t in local.items()}
            for n, t in local.items():
                t.sub_(deltas(w)[n][slice(*rows[n])])
            delta = {n: anchor[n] - t for n, t in local.items()}
            for n, t in local.items():
                t.copy_(anchor[n])
        cts = ef.compress(delta)
        if rank == 0:
            (out / f"{w}.msg").write_bytes(encode_message(cts, window=w, run="r", codec=cfg, hotkey="h"))
    save_file(dict(ef.buffers), out / f"ef-{rank}.safetensors")
    dist.barrier()
    dist.destroy_process_group()
    exit_now(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
