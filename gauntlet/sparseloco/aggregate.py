"""Combining the peers' compressed updates and applying the outer step (docs/protocol.md §3).

Per tensor, with P peers in a canonical order:

1. clip: scale each peer's values by ``min(1, median_norm / norm_p)`` where ``norm_p`` is the L2
   norm of peer p's decoded values for this tensor and ``median_norm`` the lower median over peers
   (``torch.median``, as the reference). A coded tensor's norm comes from its codes' histogram,
   ``sqrt(Σ_b count_b · lookup_b²)`` in float64: exact counts, so a rank that decodes only some rows
   computes the same norm as one that decodes all of them;
2. decode the values of the rows wanted (all of them, or a rank's shard) in one gather;
3. combine: ``mean`` sums and divides by P; ``scatter_mean`` divides each coordinate by the number
   of peers that sent it;
4. outer step: ``θ ← θ − α · aggregate`` (plain SGD, no momentum).

On CPU one ``scatter_add_`` sums all peers; it is deterministic, so every node gets bit-identical
weights for the same gathered set in the same order. On accelerators, where scatter-add uses
atomics, peers are folded one after another (indices are unique within a peer, so each fold is
exact and order-fixed). Every element's result depends only on that element's inputs, in peer order,
so decoding a shard of the rows gives exactly the bits of those rows in the whole tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from gauntlet.errors import InvalidMessage
from gauntlet.sparseloco.compress import CompressedTensor

Rows = tuple[int, int]  # a dim-0 slice [start, stop) of a tensor (what a Shard(0) rank holds)


def clip_scales(norms: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Per-peer factors ``min(1, median / norm)`` (1 where norm is 0 or clipping is off)."""
    if not enabled or norms.numel() == 0:
        return torch.ones_like(norms)
    median = norms.median()
    safe = norms.clamp_min(torch.finfo(norms.dtype).tiny)
    return torch.where(norms > median, median / safe, torch.ones_like(norms))


def median_norms(per_peer: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per tensor, the lower median of the peers' value norms (each peer: ``{name: norm}``, as
    :func:`value_norm` gives them): the norm the aggregate clips bigger updates to."""
    names = sorted(set().union(*per_peer)) if per_peer else []
    return {n: float(torch.tensor([p[n] for p in per_peer if n in p], dtype=torch.float32).median()) for n in names}


def rescale_factor(norm: torch.Tensor, target: float) -> torch.Tensor:
    """The factor that brings an update of ``norm`` to the norm ``target`` (1 for a zero update)."""
    if float(norm) == 0.0:
        return torch.ones_like(norm)
    return torch.tensor(target, dtype=norm.dtype) / norm


def code_counts(codes: torch.Tensor, bins: int) -> torch.Tensor:
    """How many values fell in each bin (int64): what a coded tensor's norm needs."""
    return torch.bincount(codes.reshape(-1).long(), minlength=bins)


def norm_from_counts(counts: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """``sqrt(Σ_b count_b · lookup_b²)`` in float64, rounded once to float32."""
    return (counts.double() * lookup.double().square()).sum().sqrt().float()


def value_norm(part: CompressedTensor) -> torch.Tensor:
    """L2 norm (float32 scalar) of one peer's decoded values of a tensor."""
    if part.raw is not None:
        return part.raw.double().square().sum().sqrt().float()
    return norm_from_counts(code_counts(part.codes, part.lookup.numel()), part.lookup)


def _chunk_values(parts: Sequence[CompressedTensor], c0: int, c1: int) -> torch.Tensor:
    """(P, c1 − c0, k) float32 values of chunks [c0, c1) of every (sparse) peer, in one gather."""
    codes = torch.stack([p.codes[c0:c1] for p in parts])
    lookups = torch.stack([p.lookup for p in parts])
    return lookups.gather(1, codes.view(len(parts), -1).long()).view(codes.shape)


def _scatter_sum(shape: tuple[int, int], idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Sum (P, C, k) values at (P, C, k) chunk-local indices into a (C, chunk_numel) buffer."""
    out = torch.zeros(shape, dtype=vals.dtype, device=vals.device)
    if vals.device.type == "cpu":
        peers, chunks, k = vals.shape
        flat = (chunks, peers * k)  # chunk-major: one row per chunk holding every peer's values
        out.scatter_add_(1, idx.permute(1, 0, 2).reshape(flat), vals.permute(1, 0, 2).reshape(flat))
    else:
        for p in range(vals.shape[0]):  # order-fixed fold; see module docstring
            out.scatter_add_(1, idx[p], vals[p])
    return out


def combine_chunks(idx: torch.Tensor, vals: torch.Tensor, scale: torch.Tensor, combine: str,
                   chunk_numel: int) -> torch.Tensor:
    """(C, chunk_numel) float32 combination of P peers' (P, C, k) values at their chunk-local
    indices, each peer scaled by ``scale[p]`` (its clipping factor)."""
    peers, shape = vals.shape[0], (vals.shape[1], chunk_numel)
    if combine == "mean":
        return _scatter_sum(shape, idx, vals * (scale / peers)[:, None, None])
    if combine != "scatter_mean":
        raise ValueError(f"combine must be 'mean' or 'scatter_mean', not {combine!r}")
    total = _scatter_sum(shape, idx, vals * scale[:, None, None])
    return total.div_(_scatter_sum(shape, idx, torch.ones_like(vals)).clamp_min_(1))


def aggregate_tensor(parts: Sequence[CompressedTensor], combine: str = "mean", clip_to_median: bool = True,
                     rows: Rows | None = None) -> torch.Tensor:
    """Aggregate one tensor's updates from P peers: a float32 tensor of the original shape, or, with
    ``rows``, only its dim-0 slice ``[start, stop)`` (decoding only the chunks those rows touch)."""
    if not parts:
        raise ValueError("aggregate needs at least one peer's update")
    lay = parts[0].layout
    if any(p.layout != lay for p in parts):
        raise InvalidMessage(f"peers disagree on the layout of a tensor of shape {lay.shape}")
    if combine not in ("mean", "scatter_mean"):
        raise ValueError(f"combine must be 'mean' or 'scatter_mean', not {combine!r}")
    peers = len(parts)
    start, stop = rows if rows is not None else (0, lay.shape[0] if lay.shape else 1)
    scale = clip_scales(torch.stack([value_norm(p) for p in parts]), clip_to_median)
    if not lay.sparse:
        vals = torch.stack([p.values() for p in parts])
        whole = (vals * scale[:, None]).sum(dim=0).div_(peers).reshape(lay.shape)
        return whole if rows is None else whole[start:stop]
    if len(lay.shape) == 1:  # a sparse 1-D tensor is one tile-row of its (1, n) view: aggregate it whole
        whole = _sparse_rows(parts, scale, combine, lay, 0, 1).reshape(lay.shape)
        return whole if rows is None else whole[start:stop]
    return _sparse_rows(parts, scale, combine, lay, start, stop).reshape((stop - start, *lay.shape[1:]))


def _sparse_rows(parts: Sequence[CompressedTensor], scale: torch.Tensor, combine: str, lay, start: int,
                 stop: int) -> torch.Tensor:
    """Rows [start, stop) of the 2-D view of a sparse tensor's aggregate, decoding only their chunks."""
    t0, t1 = lay.tile_rows_of(start, stop)
    c0, c1 = t0 * lay.tiles_c, t1 * lay.tiles_c
    idx = torch.stack([p.idx[c0:c1] for p in parts])
    total = combine_chunks(idx, _chunk_values(parts, c0, c1), scale, combine, lay.chunk_numel)
    return _rows_of(lay, total, t0, t1, start, stop)


def _rows_of(lay, total: torch.Tensor, t0: int, t1: int, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of the 2-D view from the combined chunks of tile-rows [t0, t1)."""
    block = lay.block_from_chunks(total, t0, t1)  # rows of tile-rows [t0, t1)
    first = lay.block_rows(t0, t1)[0]
    return block[start - first: stop - first]


def aggregate(
    updates: Sequence[Mapping[str, CompressedTensor]], combine: str = "mean", clip_to_median: bool = True,
    rows: Mapping[str, Rows] | None = None,
) -> dict[str, torch.Tensor]:
    """Aggregate P peers' updates (each ``{name: CompressedTensor}``, same names) tensor by tensor;
    with ``rows`` (name → dim-0 slice), only those rows of each tensor (a Shard(0) rank's part).

    The order of ``updates`` is part of the result's last bits: callers sort peers canonically
    (e.g. by hotkey) so that every node computes identical weights.
    """
    if not updates:
        raise ValueError("aggregate needs at least one peer's update")
    names = sorted(updates[0])
    if any(sorted(u) != names for u in updates[1:]):
        raise InvalidMessage("peers' updates cover different sets of tensors")
    return {n: aggregate_tensor([u[n] for u in updates], combine, clip_to_median,
                                None if rows is None else rows[n]) for n in names}


@torch.no_grad()
def outer_step(params: Mapping[str, torch.Tensor], agg: Mapping[str, torch.Tensor], lr: float) -> None:
    """SparseLoCo's outer step: ``θ ← θ − lr · aggregate`` for every aggregated tensor.

    ``lr · aggregate`` is rounded before the subtraction (no fused multiply-add), so a rank that
    holds some rows of a parameter computes exactly the bits a single process computes for them."""
    for name, update in agg.items():
        p = params[name]
        update = update.to(device=p.device, dtype=p.dtype)
        p.sub_(update if lr == 1.0 else update * lr)


def _whole_at_once(lay) -> bool:
    """Tensors aggregated from every peer's part together: dense ones and sparse 1-D ones (small)."""
    return not lay.sparse or len(lay.shape) == 1


def aggregate_stream(
    load: Callable[[int], Mapping[str, CompressedTensor]], count: int, combine: str = "mean",
    clip_to_median: bool = True, rows: Mapping[str, Rows] | None = None,
) -> dict[str, torch.Tensor]:
    """:func:`aggregate` of ``[load(0), …, load(count − 1)]`` with one peer's update in memory at a
    time — the same bits. Two passes over the peers: the first takes each tensor's norm (and keeps the
    small dense and 1-D parts), the second folds each peer's clipped values into the sums, peer by
    peer in the given order (each element receives its peers' values in that order, as in one
    scatter-add over all peers)."""
    if count <= 0:
        raise ValueError("aggregate needs at least one peer's update")
    if combine not in ("mean", "scatter_mean"):
        raise ValueError(f"combine must be 'mean' or 'scatter_mean', not {combine!r}")
    names, layouts, norms, small = _norms_pass(load, count)
    out = {n: aggregate_tensor(parts, combine, clip_to_median, None if rows is None else rows[n])
           for n, parts in small.items()}
    big = [n for n in names if n not in small]
    scales = {n: clip_scales(torch.stack(norms[n]), clip_to_median) for n in big}
    spans: dict[str, tuple[int, int, int, int]] = {}
    for n in big:
        start, stop = rows[n] if rows is not None else (0, layouts[n].shape[0])
        spans[n] = (start, stop, *layouts[n].tile_rows_of(start, stop))
    sums = _sums_pass(load, count if big else 0, big, layouts, spans, scales, combine)
    for n in big:
        lay, (start, stop, t0, t1) = layouts[n], spans[n]
        out[n] = _rows_of(lay, sums[n], t0, t1, start, stop).reshape((stop - start, *lay.shape[1:]))
    return {n: out[n] for n in names}


def _norms_pass(load: Callable[[int], Mapping[str, CompressedTensor]], count: int):
    """First pass: the tensor names and layouts all peers share (else InvalidMessage), each peer's
    value norm per tensor, and the parts of small tensors (aggregated all at once)."""
    names: list[str] | None = None
    layouts: dict[str, object] = {}
    norms: dict[str, list[torch.Tensor]] = {}
    small: dict[str, list[CompressedTensor]] = {}
    for p in range(count):
        update = load(p)
        if names is None:
            names = sorted(update)
            layouts = {n: update[n].layout for n in names}
            norms = {n: [] for n in names}
            small = {n: [] for n in names if _whole_at_once(layouts[n])}
        elif sorted(update) != names:
            raise InvalidMessage("peers' updates cover different sets of tensors")
        for n in names:
            if update[n].layout != layouts[n]:
                raise InvalidMessage(f"peers disagree on the layout of a tensor of shape {layouts[n].shape}")
            norms[n].append(value_norm(update[n]))
            if n in small:
                small[n].append(update[n])
        del update
    return names, layouts, norms, small


def _sums_pass(load: Callable[[int], Mapping[str, CompressedTensor]], count: int, big: list[str],
               layouts: Mapping[str, object], spans: Mapping[str, tuple[int, int, int, int]],
               scales: Mapping[str, torch.Tensor], combine: str) -> dict[str, torch.Tensor]:
    """Second pass: each peer's clipped values folded into per-chunk sums of the tile rows in
    ``spans``, peer by peer; the combined chunks of every tensor in ``big``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for p in range(count):
        update = load(p)
        for n in big:
            ct, (_, _, t0, t1) = update[n], spans[n]
            c0, c1 = t0 * layouts[n].tiles_c, t1 * layouts[n].tiles_c
            idx = ct.idx[c0:c1]
            vals = ct.lookup.gather(0, ct.codes[c0:c1].reshape(-1).long()).view(idx.shape)
            if n not in sums:
                sums[n] = torch.zeros((c1 - c0, layouts[n].chunk_numel), dtype=vals.dtype, device=vals.device)
                if combine == "scatter_mean":
                    counts[n] = torch.zeros_like(sums[n])
            if combine == "mean":
                sums[n].scatter_add_(1, idx, vals * (scales[n][p] / count))
            else:
                sums[n].scatter_add_(1, idx, vals * scales[n][p])
                counts[n].scatter_add_(1, idx, torch.ones_like(vals))
        del update
    if combine == "scatter_mean":
        for n in sums:
            sums[n].div_(counts[n].clamp_min_(1))
    return sums
