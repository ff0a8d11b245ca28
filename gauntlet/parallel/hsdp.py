"""SparseLoCo's outer step on a device mesh with a replica and a shard dimension (HSDP style).

Each replica is a group of ``shard`` ranks holding one copy of the model, sharded by ``fully_shard``
over the ``shard`` dimension; replicas train apart and meet only at the outer step, along the
``replicate`` dimension:

1. error feedback and compression within each replica's shard group
   (:class:`~gauntlet.sparseloco.sharding.ShardedErrorFeedback`: every rank ends up with the indices
   and codes of its owned tile-rows and the replica's lookup tables);
2. every rank sends *its part* — 1/shard of its replica's message — to the ranks with the same shard
   index in the other replicas (an all-gather over the ``replicate`` group; bytes, never pickle);
3. each rank combines the replicas' parts for its tile-rows (median clipping from the replicas'
   whole-tensor norms: code histograms summed over the shard group, exact integers), returns the
   rows other ranks hold (the halo), and applies the outer step to its shard.

The arithmetic is the single-process arithmetic element for element, so all replicas end
bit-identical, and equal to what the unsharded wrapper computes for the same Δ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import safetensors.torch
import torch
import torch.distributed as dist

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import ConfigError, TransportError
from gauntlet.parallel.comm import TorchShardComm
from gauntlet.sparseloco import bitpack
from gauntlet.sparseloco.aggregate import (aggregate_tensor, clip_scales, code_counts, combine_chunks,
                                           norm_from_counts)
from gauntlet.sparseloco.compress import CompressedTensor
from gauntlet.sparseloco.quant import dequantize
from gauntlet.sparseloco.sharding import LocalPart, ShardedErrorFeedback
from gauntlet.sparseloco.transport import TorchDistributedTransport


@dataclass(frozen=True)
class ReplicaMesh:
    """Which dimensions of a ``DeviceMesh`` are the replicas and the shards. The mesh may have more
    dimensions (pipeline stages, say): replicas exchange along ``replicate`` with the ranks that share
    every other coordinate, and the model is sharded by ``fully_shard`` over ``shard`` alone."""

    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    replicate: str = "replicate"
    shard: str = "shard"

    @classmethod
    def of(cls, mesh, dims: tuple[str, str] = ("replicate", "shard")) -> ReplicaMesh:
        """Check that ``dims`` (replica dimension, shard dimension) name two dimensions of ``mesh``."""
        names = tuple(mesh.mesh_dim_names or ())
        if len(dims) != 2 or dims[0] == dims[1] or not set(dims) <= set(names):
            raise ConfigError(
                f"SparseLoCo needs the names of the mesh's replica and shard dimensions: mesh_dims={tuple(dims)} "
                f"but the mesh's dimensions are {names or mesh.ndim}; name them when you build it, e.g. "
                f"init_device_mesh(device, (replicas, shards), mesh_dim_names=('replicate', 'shard')), or pass "
                f"mesh_dims=('dp_replicate', 'dp_shard') for a mesh with those names")
        return cls(mesh, dims[0], dims[1])

    @property
    def shard_mesh(self):
        """The 1-D mesh ``fully_shard`` shards the model over (one replica's ranks)."""
        return self.mesh[self.shard]

    @property
    def pair(self):
        """The 2-D sub-mesh of the two dimensions, in the mesh's own order."""
        names = [n for n in self.mesh.mesh_dim_names if n in (self.replicate, self.shard)]
        return self.mesh[tuple(names)]


class ReplicaExchange:
    def __init__(self, spec: Mapping[str, tuple[int, ...]], cfg: SparseLoCoConfig, mesh: ReplicaMesh,
                 device: torch.device | str) -> None:
        self.cfg, self.spec = cfg, dict(spec)
        self.shard_group, self.replicate_group = mesh.mesh.get_group(mesh.shard), mesh.mesh.get_group(mesh.replicate)
        self.comm = TorchShardComm(self.shard_group, device)
        self.transport = TorchDistributedTransport(self.replicate_group)
        self.error_feedback = ShardedErrorFeedback(spec, cfg, self.comm, device)
        self.device = torch.device(device)

    @property
    def replicas(self) -> int:
        return self.transport.world_size

    def step(self, delta: Mapping[str, torch.Tensor], outer_step: int) -> tuple[dict[str, torch.Tensor], int, int]:
        """This rank's rows of the aggregate of every replica's update; bytes sent and received."""
        parts = self.error_feedback.compress_parts(delta)
        payload = self._encode(parts, outer_step)
        received = self.transport.exchange(payload)
        replicas = [self._decode(data, outer_step) for data in received]
        agg = {name: self._combine(name, [r[name] for r in replicas]) for name in self.spec}
        return agg, len(payload), sum(len(p) for p in received)

    # ---------------------------------------------------------------------------------- parts

    def _encode(self, parts: Mapping[str, LocalPart], outer_step: int) -> bytes:
        cfg, out = self.cfg, {}
        for name, part in parts.items():
            lay = self.error_feedback.plans[name].layout
            if part.raw is not None:
                out[f"{name}::raw"] = part.raw.reshape(-1).cpu().contiguous()
                continue
            out[f"{name}::lookup"] = part.lookup.float().cpu().contiguous()
            bits = cfg.quant_bits if lay.sparse else 8
            out[f"{name}::codes"] = bitpack.pack_codes(part.codes.reshape(-1).cpu(), bits)
            if lay.sparse:
                out[f"{name}::idx"] = bitpack.pack_indices(part.idx.reshape(-1).cpu(), lay.index_bits)
        meta = {"outer_step": str(outer_step), "shard": str(self.comm.rank)}
        return safetensors.torch.save(out, metadata=meta)

    def _decode(self, data: bytes, outer_step: int) -> dict[str, LocalPart]:
        """Another replica's part for the same tile-rows, checked against this rank's plan."""
        try:
            size = int.from_bytes(data[:8], "little")
            if not 0 < size <= len(data) - 8:
                raise ValueError("bad header length")
            meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
            tensors = safetensors.torch.load(data)
        except Exception as exc:  # json's and the safetensors library's own error types
            raise TransportError(f"a replica sent an unreadable part: {exc}") from exc
        if meta.get("outer_step") != str(outer_step) or meta.get("shard") != str(self.comm.rank):
            raise TransportError(f"a replica's part is for outer step {meta.get('outer_step')} / shard "
                                 f"{meta.get('shard')}, not {outer_step} / {self.comm.rank}")
        cfg, me, out = self.cfg, self.comm.rank, {}
        for name, plan in self.error_feedback.plans.items():
            lay = plan.layout
            try:
                if not lay.sparse and cfg.dense_bits == 16:
                    out[name] = LocalPart(raw=tensors[f"{name}::raw"].to(self.device))
                    continue
                count = plan.kept(me) if lay.sparse else self.error_feedback.dense_sizes(plan)[me]
                bits = cfg.quant_bits if lay.sparse else 8
                codes = bitpack.unpack_codes(tensors[f"{name}::codes"], bits, count)
                lookup = tensors[f"{name}::lookup"]
                idx = bitpack.unpack_indices(tensors[f"{name}::idx"], lay.index_bits, count).view(-1, lay.k) \
                    if lay.sparse else None
            except (KeyError, RuntimeError, ValueError) as exc:
                raise TransportError(f"a replica's part of {name!r} does not match this plan: {exc}") from exc
            if lookup.numel() != 1 << bits or not bool(torch.isfinite(lookup).all()):
                raise TransportError(f"a replica's lookup table of {name!r} is malformed")
            out[name] = LocalPart(idx=None if idx is None else idx.to(self.device),
                                  codes=(codes.view(-1, lay.k) if lay.sparse else codes).to(self.device),
                                  lookup=lookup.to(self.device))
        return out

    # ------------------------------------------------------------------------------- combine

    def _combine(self, name: str, got: list[LocalPart]) -> torch.Tensor:
        plan = self.error_feedback.plans[name]
        lay, cfg, me = plan.layout, self.cfg, self.comm.rank
        if not lay.sparse:  # small: reassemble each replica's whole tensor, then this rank's rows
            sizes = self.error_feedback.dense_sizes(plan)
            whole = []
            for part in got:
                if part.raw is not None:
                    whole.append(CompressedTensor(lay, raw=torch.cat(self.comm.all_gather(part.raw, sizes))))
                else:
                    whole.append(CompressedTensor(lay, codes=torch.cat(self.comm.all_gather(part.codes, sizes)),
                                                  lookup=part.lookup))
            return aggregate_tensor(whole, cfg.combine, cfg.clip_to_median, plan.rows[me])
        counts = torch.stack([code_counts(p.codes, p.lookup.numel()) for p in got])
        if plan.world > 1:
            dist.all_reduce(counts, group=self.shard_group)  # exact: integers
        scale = clip_scales(torch.stack([norm_from_counts(c, p.lookup) for c, p in zip(counts, got)]),
                            cfg.clip_to_median)
        t0, t1 = plan.owned[me]
        if t1 > t0:
            vals = torch.stack([dequantize(p.codes, p.lookup) for p in got])
            total = combine_chunks(torch.stack([p.idx for p in got]), vals, scale, cfg.combine, lay.chunk_numel)
            block = lay.from_chunks(total) if len(lay.shape) == 1 else lay.block_from_chunks(total, t0, t1)
        else:
            block = torch.zeros(0, device=self.device)
        return self.error_feedback.return_rows(name, block)
