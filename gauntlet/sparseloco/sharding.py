"""SparseLoCo on tensors sharded on dim 0 (FSDP2's ``Shard(0)``), without ever holding a whole tensor.

**Rows.** Rank r of N holds rows ``[min(n, r·c), min(n, (r+1)·c))`` of a tensor's dim 0, with
``c = ceil(n / N)`` — ``torch.chunk`` semantics, which is how ``fully_shard`` splits parameters (so
the last ranks may hold fewer rows, or none). Error-feedback buffers live in the same rows as the
parameter shard, so they are saved and re-sharded like the parameters.

**Tiles on uneven shards.** The codec tiles a tensor's 2-D view ``(d0, rest)`` into tile-rows of
``side_r`` rows (:mod:`.chunking`), and a shard boundary may cut a tile-row. *A tile-row belongs to
the rank that holds its first row*: that rank compresses it whole, borrowing the rows of it that the
next ranks hold (fewer than ``side_r`` per boundary; more only when shards are thinner than a tile)
and returning them, updated, afterwards (two ``all_to_all`` calls). Owned tile-rows are contiguous and
ascend with the rank, so the ranks' chunks, concatenated in rank order, are exactly the chunk order
of the whole tensor. A 1-D tensor is one tile-row when it is sparse (``sparse_1d``): rank 0 owns it.

**Same bytes as one process.** Top-k is per chunk and every element-wise step rounds exactly as on
the whole tensor (no fused multiply-adds, see :meth:`.TensorLayout.add_into_chunks`). Quantisation
depends on all kept values of a tensor (mean, σ, bin means): the ranks all-gather their kept values
— 1/64 of the tensor — in chunk order and every rank quantises the same vector, so all hold the same
codes and lookup. Rank 0 gathers the indices and writes the message: byte-identical to the message a
single process writes for the same whole Δ, whatever N. Dense tensors (small or 1-D) are gathered.

The collectives come through :class:`ShardComm`; :class:`SoloComm` is the world of one, and
:mod:`gauntlet.parallel` implements it with ``torch.distributed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import CodecError
from gauntlet.sparseloco.aggregate import Rows
from gauntlet.sparseloco.chunking import TensorLayout, make_layout
from gauntlet.sparseloco.compress import CompressedTensor, select_topk
from gauntlet.sparseloco.quant import dequantize, quantize


class ShardComm(Protocol):
    """The collectives the sharded codec needs, over the ranks that share one model. All tensors are
    1-D and every size is known to every rank beforehand (computed from the plan)."""

    rank: int
    world_size: int

    def all_to_all(self, send: list[torch.Tensor], recv_sizes: list[int]) -> list[torch.Tensor]:
        """``send[r]`` goes to rank r; returns what each rank sent here, in rank order."""
        ...

    def all_gather(self, tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        """Every rank's tensor (rank r's has ``sizes[r]`` elements), in rank order."""
        ...

    def gather(self, tensor: torch.Tensor, sizes: list[int], dst: int = 0) -> list[torch.Tensor] | None:
        """On ``dst``: every rank's tensor in rank order; None elsewhere."""
        ...


class SoloComm:
    """A world of one."""

    rank, world_size = 0, 1

    def all_to_all(self, send: list[torch.Tensor], recv_sizes: list[int]) -> list[torch.Tensor]:
        return list(send)

    def all_gather(self, tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        return [tensor]

    def gather(self, tensor: torch.Tensor, sizes: list[int], dst: int = 0) -> list[torch.Tensor] | None:
        return [tensor]


@dataclass(frozen=True)
class LocalPart:
    """One rank's part of a tensor's message. Sparse: the indices and codes of the chunks of its
    owned tile-rows, the tensor's lookup, and every rank's codes (all ranks quantise the same
    values). Dense: its rows, bf16 (``raw``) or 8-bit codes (and all codes, and the lookup)."""

    idx: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    lookup: torch.Tensor | None = None
    raw: torch.Tensor | None = None
    all_codes: torch.Tensor | None = None


def shard_rows(n: int, world: int, rank: int) -> Rows:
    """Dim-0 rows ``[start, stop)`` rank ``rank`` of ``world`` holds (``torch.chunk`` / ``Shard(0)``)."""
    per = -(-n // world) if n else 0
    return min(n, rank * per), min(n, (rank + 1) * per)


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    return (lo, hi) if lo < hi else (lo, lo)


@dataclass(frozen=True)
class TensorPlan:
    """How one tensor is split over ``world`` ranks: each rank's rows, the tile-rows it compresses,
    and both as flat element ranges of the tensor."""

    layout: TensorLayout
    world: int
    rows: tuple[Rows, ...]  # dim-0 rows held, per rank
    owned: tuple[tuple[int, int], ...]  # tile-rows [t0, t1) compressed, per rank (sparse tensors)

    @property
    def row_numel(self) -> int:
        """Elements per dim-0 row."""
        shape = self.layout.shape
        return self.layout.numel // shape[0] if shape else 1

    def shard_span(self, rank: int) -> tuple[int, int]:
        """Flat elements of the tensor held by ``rank``."""
        a, b = self.rows[rank]
        return a * self.row_numel, b * self.row_numel

    def block_span(self, rank: int) -> tuple[int, int]:
        """Flat elements of the tile-rows ``rank`` compresses."""
        lay, (t0, t1) = self.layout, self.owned[rank]
        if t0 == t1:
            return (0, 0)
        if len(lay.shape) == 1:
            return (0, lay.numel)
        lo, hi = lay.block_rows(t0, t1)
        return lo * lay.cols, hi * lay.cols

    def kept(self, rank: int) -> int:
        """Values ``rank`` selects (k per owned chunk)."""
        t0, t1 = self.owned[rank]
        return (t1 - t0) * self.layout.tiles_c * self.layout.k


def make_plan(shape: tuple[int, ...] | torch.Size, cfg: SparseLoCoConfig, world: int) -> TensorPlan:
    """The split of a tensor of this (whole) shape over ``world`` ranks (pure; all ranks agree)."""
    lay = make_layout(shape, cfg)
    n = lay.shape[0] if lay.shape else 1
    rows = tuple(shard_rows(n, world, r) for r in range(world))
    if not lay.sparse:
        owned = tuple((0, 0) for _ in rows)
    elif len(lay.shape) == 1:  # one tile-row: the rank holding element 0 owns it
        owned = tuple((0, 1) if r == 0 else (0, 0) for r in range(world))
    else:
        side = lay.side_r
        owned = tuple((-(-a // side), -(-b // side)) if a < b else (0, 0) for a, b in rows)
    return TensorPlan(lay, world, rows, owned)


class ShardedErrorFeedback:
    """Error feedback for the shards one rank holds of a set of tensors (docs/protocol.md §2.4).

    ``shapes`` are the whole tensors' shapes; the buffers hold this rank's rows (float32, shaped
    like the parameter shard). :meth:`compress` is collective: every rank calls it with its rows of
    Δ, and rank 0 gets the whole message's tensors (other ranks get ``{}``)."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...] | torch.Size], cfg: SparseLoCoConfig, comm: ShardComm,
                 device: torch.device | str = "cpu") -> None:
        self.cfg, self.comm = cfg, comm
        self.plans = {n: make_plan(tuple(s), cfg, comm.world_size) for n, s in sorted(shapes.items())}
        self.buffers: dict[str, torch.Tensor] = {}
        for name, plan in self.plans.items():
            a, b = plan.rows[comm.rank]
            local = (b - a, *plan.layout.shape[1:]) if plan.layout.shape else ()
            self.buffers[name] = torch.zeros(local, dtype=torch.float32, device=device)

    def local_rows(self) -> dict[str, Rows]:
        """Each tensor's dim-0 rows held by this rank."""
        return {n: p.rows[self.comm.rank] for n, p in self.plans.items()}

    def compress(self, delta: Mapping[str, torch.Tensor]) -> dict[str, CompressedTensor]:
        """Fold this rank's rows of Δ into the residuals, compress, subtract what was sent; rank 0
        gets the whole message's tensors (indices gathered from every rank), the others ``{}``."""
        out: dict[str, CompressedTensor] = {}
        for name, part in self.compress_parts(delta).items():
            plan, lay = self.plans[name], self.plans[name].layout
            if lay.sparse:
                got = self.comm.gather(part.idx.to(torch.int32).reshape(-1), [plan.kept(r) for r in range(plan.world)])
                if got is not None:
                    out[name] = CompressedTensor(lay, idx=torch.cat(got).long().view(lay.num_chunks, lay.k),
                                                 codes=part.all_codes.view(lay.num_chunks, lay.k), lookup=part.lookup)
            elif part.raw is not None:
                got = self.comm.gather(part.raw, self.dense_sizes(plan))
                if got is not None:
                    out[name] = CompressedTensor(lay, raw=torch.cat(got))
            elif self.comm.rank == 0:
                out[name] = CompressedTensor(lay, codes=part.all_codes, lookup=part.lookup)
        return out

    def compress_parts(self, delta: Mapping[str, torch.Tensor]) -> dict[str, LocalPart]:
        """The error-feedback step, leaving each rank with its part of the message (see :class:`LocalPart`)."""
        missing = self.plans.keys() - delta.keys()
        if missing:
            raise CodecError(f"pseudo-gradient lacks {len(missing)} tensors, e.g. {sorted(missing)[0]!r}")
        out: dict[str, LocalPart] = {}
        for name, plan in self.plans.items():
            buf, d = self.buffers[name], delta[name].detach()
            if tuple(d.shape) != tuple(buf.shape):
                raise CodecError(f"{name}: this rank's pseudo-gradient has shape {tuple(d.shape)}, its shard "
                                 f"{tuple(buf.shape)}")
            buf.mul_(self.cfg.ef_decay)
            buf.add_(d if self.cfg.ef_scale == 1.0 else d * self.cfg.ef_scale)
            out[name] = self._compress_dense(plan, buf) if not plan.layout.sparse else self._compress_sparse(plan, buf)
        return out

    @staticmethod
    def dense_sizes(plan: TensorPlan) -> list[int]:
        return [plan.shard_span(r)[1] - plan.shard_span(r)[0] for r in range(plan.world)]

    # --------------------------------------------------------------------------------- dense

    def _compress_dense(self, plan: TensorPlan, buf: torch.Tensor) -> LocalPart:
        comm, flat = self.comm, buf.view(-1)
        if self.cfg.dense_bits == 16:
            raw = flat.to(torch.bfloat16)
            if not torch.isfinite(raw).all():
                raise CodecError("cannot encode non-finite values: the pseudo-gradient holds NaN or Inf")
            flat.sub_(raw.float())
            return LocalPart(raw=raw)
        values = torch.cat(comm.all_gather(flat.contiguous(), self.dense_sizes(plan)))
        codes, lookup = quantize(values, 8, self.cfg.quant_range_sigmas)
        lo, hi = plan.shard_span(comm.rank)
        flat.sub_(dequantize(codes[lo:hi], lookup))
        return LocalPart(codes=codes[lo:hi], lookup=lookup, all_codes=codes)

    # -------------------------------------------------------------------------------- sparse

    def _halo(self, plan: TensorPlan, data: torch.Tensor, gathering: bool) -> list[torch.Tensor]:
        """Gathering: send each rank the part of our shard its block needs; returns the pieces of our
        block (one per rank, rank order). Returning: the reverse, ``data`` being our block."""
        me, world = self.comm.rank, plan.world
        shard, block = plan.shard_span(me), plan.block_span(me)
        send, recv_sizes = [], []
        for r in range(world):
            if gathering:
                lo, hi = _overlap(shard, plan.block_span(r))
                send.append(data[lo - shard[0]: hi - shard[0]])
                rlo, rhi = _overlap(plan.shard_span(r), block)
            else:
                lo, hi = _overlap(plan.shard_span(r), block)
                send.append(data[lo - block[0]: hi - block[0]])
                rlo, rhi = _overlap(shard, plan.block_span(r))
            recv_sizes.append(rhi - rlo)
        return self.comm.all_to_all([s.contiguous() for s in send], recv_sizes)

    def _compress_sparse(self, plan: TensorPlan, buf: torch.Tensor) -> LocalPart:
        comm, lay, cfg = self.comm, plan.layout, self.cfg
        me, (t0, t1) = comm.rank, plan.owned[comm.rank]
        flat = buf.view(-1)
        block = torch.cat(self._halo(plan, flat, gathering=True)) if plan.world > 1 else flat
        if len(lay.shape) == 1:
            chunks = lay.to_chunks(block) if t1 > t0 else block.new_zeros(0, lay.chunk_numel)
        else:
            lo, hi = lay.block_rows(t0, t1)
            chunks = lay.block_to_chunks(block.view(hi - lo, lay.cols), t0, t1)
        idx = select_topk(chunks, lay, lay.block_pad_index(t0, t1), whole=False) if t1 > t0 else \
            torch.zeros(0, lay.k, dtype=torch.int64, device=chunks.device)
        kept = [plan.kept(r) for r in range(plan.world)]
        values = torch.cat(comm.all_gather(chunks.gather(1, idx).reshape(-1), kept))
        codes, lookup = quantize(values, cfg.quant_bits, cfg.quant_range_sigmas)
        offset = sum(kept[:me])
        mine = codes[offset: offset + kept[me]].view(-1, lay.k)
        chunks.scatter_add_(1, idx, dequantize(mine, lookup).neg_())
        if len(lay.shape) == 1:
            updated = lay.from_chunks(chunks).reshape(-1) if t1 > t0 else chunks.reshape(-1)
        else:
            updated = lay.block_from_chunks(chunks, t0, t1).reshape(-1)
        if plan.world > 1:
            flat.copy_(torch.cat(self._halo(plan, updated, gathering=False)))
        else:
            flat.copy_(updated)
        return LocalPart(idx=idx, codes=mine, lookup=lookup, all_codes=codes)

    def return_rows(self, name: str, block: torch.Tensor) -> torch.Tensor:
        """Values computed for the rows of this rank's owned tile-rows (flat) → the values of the
        rows this rank holds, shaped like its shard (the halo, returned)."""
        plan = self.plans[name]
        flat = torch.cat(self._halo(plan, block.reshape(-1), gathering=False)) if plan.world > 1 else block.reshape(-1)
        return flat.view(self.buffers[name].shape)

    # --------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's rows of every residual (``ef.NAME``), shaped like the parameter shards."""
        return {f"ef.{n}": b for n, b in self.buffers.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, buf in self.buffers.items():
            src = state.get(f"ef.{name}")
            if src is None or tuple(src.shape) != tuple(buf.shape):
                raise CodecError(f"error-feedback state for {name!r} is missing or has the wrong shape")
            buf.copy_(src)
