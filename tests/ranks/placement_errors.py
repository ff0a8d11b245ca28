"""Run under torchrun with 2 ranks: every way of handing SparseLoCo a wrongly sharded model is a
ConfigError naming what is wrong; rank 0 prints one JSON line {case: message}."""

import json

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from gauntlet.errors import ConfigError
from gauntlet.parallel.fsdp import shard_model
from gauntlet.parallel.world import exit_now
from gauntlet.sparseloco.embed import DiLoCo, SparseLoCo


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 8))


def attempt(build) -> str:
    try:
        build()
    except ConfigError as exc:
        return str(exc)
    return "no error"


def main() -> None:
    dist.init_process_group("gloo")
    mesh2d = init_device_mesh("cpu", (1, 2), mesh_dim_names=("replicate", "shard"))
    wrong_names = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))
    flat = init_device_mesh("cpu", (2,))
    out = {}

    def wrap(m, mesh):
        return SparseLoCo(m, torch.optim.SGD(m.parameters(), lr=0.1), mesh=mesh, inner_steps=2)

    out["mesh names"] = attempt(lambda: wrap(shard_model(model(), mesh2d["shard"]), wrong_names))
    out["not sharded"] = attempt(lambda: wrap(model(), mesh2d))
    m = model()
    m[0].weight = torch.nn.Parameter(distribute_tensor(m[0].weight.detach(), mesh2d["shard"], [Shard(1)]))
    out["dim 1"] = attempt(lambda: wrap(m, mesh2d))
    two_replicas = init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard"))
    out["other mesh"] = attempt(lambda: wrap(shard_model(model(), flat), two_replicas))  # sharded over both ranks
    out["transport and mesh"] = attempt(lambda: SparseLoCo(model(), torch.optim.SGD(model().parameters(), lr=0.1)))
    m = shard_model(model(), wrong_names["tp"])
    out["diloco mesh dims"] = attempt(lambda: DiLoCo(m, torch.optim.SGD(m.parameters(), lr=0.1), mesh=wrong_names,
                                                     mesh_dims=("dp", "shard")))
    out["diloco not sharded"] = attempt(lambda: DiLoCo(model(), torch.optim.SGD(model().parameters(), lr=0.1),
                                                       mesh=wrong_names, mesh_dims=("dp", "tp")))
    if dist.get_rank() == 0:
        print(json.dumps(out), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    exit_now(0)


if __name__ == "__main__":
    main()
