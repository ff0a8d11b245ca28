"""Run under torchrun: the embedded wrappers' state through torch.distributed.checkpoint.

    embed_dcp.py OUT JOB:ACTION:REPLICAS [JOB:ACTION:REPLICAS ...]

For each job the ranks form a 3-D mesh ``(pp=1, dp_replicate=REPLICAS, dp_shard=world/REPLICAS)``
and shard a small model over ``dp_shard`` with ``fully_shard``; a SparseLoCo and a DiLoCo wrapper
(``mesh_dims=("dp_replicate", "dp_shard")``) each run outer steps on fixed pseudo-gradients (the same
whole Δ on every shard count, another one per replica). ``save``: two outer steps, then
``dcp.save`` of the models and the wrappers' ``state_dict()`` to ``OUT/JOB``; ``load``: ``dcp.load``
into fresh wrappers and ``load_state_dict``. Both then run the third outer step, and rank 0 writes
``OUT/JOB-ACTION-<world>.json``: the counters and the sha256 of every whole weight and residual (with
one replica, also of the weights the unsharded wrappers reach with the same three steps).
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from gauntlet.config import DiLoCoConfig, SparseLoCoConfig
from gauntlet.parallel.world import exit_now
from gauntlet.sparseloco import DiLoCo, SoloTransport, SparseLoCo
from gauntlet.sparseloco.sharding import shard_rows

DIMS = ("dp_replicate", "dp_shard")


def model() -> torch.nn.Module:
    torch.manual_seed(0)  # rows that split unevenly over 4 ranks, and a tensor smaller than one tile
    return torch.nn.Sequential(torch.nn.Linear(64, 97), torch.nn.Linear(97, 30), torch.nn.Linear(30, 3))


def whole_delta(step: int, replica: int, name: str, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + 10 * replica + sum(map(ord, name)))
    return torch.randn(shape, generator=g) * 0.01


def outer_step(outer, sharded: dict, step: int, replica: int, shard: int, shards: int) -> None:
    """Move this rank's rows by this replica's Δ of ``step``, then the outer step."""
    with torch.no_grad():
        for name, p in sharded.items():
            a, b = shard_rows(p.shape[0], shards, shard)
            outer.params[name].sub_(whole_delta(step, replica, name, p.shape)[a:b])
    outer.sync()


def digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        t = t.full_tensor() if isinstance(t, DTensor) else t
        h.update(name.encode() + t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def job(out: Path, name: str, action: str, replicas: int) -> None:
    world, rank = dist.get_world_size(), dist.get_rank()
    shards = world // replicas
    mesh = init_device_mesh("cpu", (1, replicas, shards), mesh_dim_names=("pp", *DIMS))
    replica, shard = mesh.get_local_rank("dp_replicate"), mesh.get_local_rank("dp_shard")
    models, outers = {}, {}
    for kind in ("sparseloco", "diloco"):
        m = model()
        for layer in m:
            fully_shard(layer, mesh=mesh["dp_shard"])
        fully_shard(m, mesh=mesh["dp_shard"])
        inner = torch.optim.SGD(m.parameters(), lr=0.1)
        models[kind] = m
        outers[kind] = (SparseLoCo(m, inner, mesh=mesh, mesh_dims=DIMS, hook=False, run="dcp",
                                   config=SparseLoCoConfig(topk=8, chunk_size=64))
                        if kind == "sparseloco" else
                        DiLoCo(m, inner, mesh=mesh, mesh_dims=DIMS, hook=False, config=DiLoCoConfig()))
    state = {kind: {"model": models[kind].state_dict(), "outer": outers[kind].state_dict()} for kind in models}
    if action == "save":
        for step in (0, 1):
            for kind in models:
                outer_step(outers[kind], dict(models[kind].named_parameters()), step, replica, shard, shards)
        dcp.save(state, checkpoint_id=str(out / name))
    else:
        dcp.load(state, checkpoint_id=str(out / name))
        for kind in models:
            outers[kind].load_state_dict(state[kind]["outer"])
    result = {"counters": {k: [o.inner_step, o.outer_steps] for k, o in outers.items()}}
    for kind in models:
        outer_step(outers[kind], dict(models[kind].named_parameters()), 2, replica, shard, shards)
        result[f"{kind}_weights"] = digest(dict(models[kind].named_parameters()))
        replica_state = {k: v for k, v in outers[kind].state_dict().items() if k != "counters"}
        result[f"{kind}_state"] = digest(replica_state)
    if rank == 0:
        if replicas == 1:
            result.update(unsharded())
        (out / f"{name}-{action}-{world}.json").write_text(json.dumps(result))


def unsharded() -> dict:
    """The same three outer steps of one replica on whole tensors with the unsharded wrappers."""
    out = {}
    for kind in ("sparseloco", "diloco"):
        m = model()
        inner = torch.optim.SGD(m.parameters(), lr=0.1)
        outer = (SparseLoCo(m, inner, SoloTransport(), hook=False, run="dcp",
                            config=SparseLoCoConfig(topk=8, chunk_size=64))
                 if kind == "sparseloco" else DiLoCo(m, inner, SoloTransport(), hook=False, config=DiLoCoConfig()))
        for step in range(3):
            outer_step(outer, dict(m.named_parameters()), step, 0, 0, 1)
        out[f"{kind}_unsharded_weights"] = digest(dict(m.named_parameters()))
    return out


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    out = Path(sys.argv[1])
    for spec in sys.argv[2:]:
        name, action, replicas = spec.split(":")
        job(out, name, action, int(replicas))
        dist.barrier()
    dist.destroy_process_group()
    exit_now(0)


if __name__ == "__main__":
    main()
