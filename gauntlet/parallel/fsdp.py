"""``fully_shard`` wiring, kept apart from the model (as torchtitan keeps ``parallelize``): each
transformer block is its own FSDP unit (its parameters are all-gathered just before it runs), then
the root module takes the rest (embeddings, final norm, head). Every parameter ends up a DTensor
sharded on dim 0 (``Shard(0)``): rank r holds rows ``torch.chunk(n, N)[r]``, which is what
:mod:`gauntlet.sparseloco.sharding` expects — :func:`check_sharding` makes sure of it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard

from gauntlet.errors import ConfigError
from gauntlet.sparseloco.sharding import shard_rows


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face causal LM (``model.model.layers``), else none."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if isinstance(layers, Iterable) else []


def shard_model(model: torch.nn.Module, mesh, reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2 over ``mesh`` (1-D, or the shard dimension of a 2-D mesh): blocks, then the root."""
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def check_sharding(params: Mapping[str, torch.Tensor], world: int, rank: int, mesh_dim: int | None = None,
                   mesh=None) -> None:
    """Every parameter is a DTensor sharded on dim 0 over ``world`` ranks as ``torch.chunk`` splits it
    (on ``mesh_dim`` of a 2-D mesh, replicated on the other) — over ``mesh`` when one is given —
    else :class:`ConfigError` naming it."""
    for name, p in params.items():
        if not isinstance(p, DTensor):
            raise ConfigError(f"parameter {name!r} is not sharded (not a DTensor): apply fully_shard to the model "
                              f"before handing it to SparseLoCo")
        if mesh is not None and (p.device_mesh.ndim != mesh.ndim or p.device_mesh.mesh.tolist() != mesh.mesh.tolist()):
            raise ConfigError(f"parameter {name!r} is sharded over the ranks {p.device_mesh.mesh.tolist()}, not over "
                              f"{mesh.mesh.tolist()}: apply fully_shard(model, mesh=mesh['shard']) with the mesh given "
                              f"to SparseLoCo")
        placements = tuple(p.placements)
        shard_dim = mesh_dim if mesh_dim is not None else len(placements) - 1
        others = [pl for i, pl in enumerate(placements) if i != shard_dim]
        if placements[shard_dim] != Shard(0) or any(pl != Replicate() for pl in others):
            raise ConfigError(f"parameter {name!r} is placed {placements}: SparseLoCo needs Shard(0) on the shard "
                              f"dimension of the mesh and Replicate elsewhere")
        a, b = shard_rows(p.shape[0], world, rank)
        if tuple(p.to_local().shape) != (b - a, *p.shape[1:]):
            raise ConfigError(f"parameter {name!r}: this rank holds {tuple(p.to_local().shape)}, expected rows "
                              f"[{a}, {b}) of {tuple(p.shape)} (torch.chunk over {world} ranks)")


def local_tensors(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each parameter's local shard (the tensor itself when not sharded); writes go to the parameter."""
    return {n: p._local_tensor if isinstance(p, DTensor) else p for n, p in params.items()}
