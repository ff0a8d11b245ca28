"""Combining the peers' compressed updates and applying the outer step (PROTOCOL §3).

Per tensor, with P peers in a canonical order:

1. decode every peer's values (one gather over all peers at once);
2. clip: scale each peer's values by ``min(1, median_norm / norm_p)`` where ``norm_p`` is the L2
   norm of peer p's decoded values for this tensor and ``median_norm`` the lower median over peers
   (``torch.median``, as the reference);
3. combine: ``mean`` sums and divides by P; ``scatter_mean`` divides each coordinate by the number
   of peers that sent it;
4. outer step: ``θ ← θ − α · aggregate`` (plain SGD, no momentum).

On CPU one ``scatter_add_`` sums all peers; it is deterministic, so every node gets bit-identical
weights for the same gathered set in the same order. On accelerators, where scatter-add uses
atomics, peers are folded one after another (indices are unique within a peer, so each fold is
exact and order-fixed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gauntlet.errors import InvalidMessage
from gauntlet.sparseloco.chunking import TensorLayout
from gauntlet.sparseloco.compress import CompressedTensor


def clip_scales(norms: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Per-peer factors ``min(1, median / norm)`` (1 where norm is 0 or clipping is off)."""
    if not enabled or norms.numel() == 0:
        return torch.ones_like(norms)
    median = norms.median()
    safe = norms.clamp_min(torch.finfo(norms.dtype).tiny)
    return torch.where(norms > median, median / safe, torch.ones_like(norms))


def _peer_values(parts: Sequence[CompressedTensor]) -> torch.Tensor:
    """(P, ...) float32 decoded values of every peer, in one gather when all are coded."""
    if all(p.raw is None for p in parts):
        codes = torch.stack([p.codes for p in parts])
        lookups = torch.stack([p.lookup for p in parts])
        return lookups.gather(1, codes.view(len(parts), -1).long()).view(codes.shape)
    return torch.stack([p.values() for p in parts])


def _scatter_sum(lay: TensorLayout, idx: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Sum (P, C, k) values at (P, C, k) chunk-local indices into a (C, chunk_numel) buffer."""
    out = torch.zeros(lay.buffer_shape, dtype=vals.dtype, device=vals.device)
    if vals.device.type == "cpu":
        peers, chunks, k = vals.shape
        flat = (chunks, peers * k)  # chunk-major: one row per chunk holding every peer's values
        out.scatter_add_(1, idx.permute(1, 0, 2).reshape(flat), vals.permute(1, 0, 2).reshape(flat))
    else:
        for p in range(vals.shape[0]):  # order-fixed fold; see module docstring
            out.scatter_add_(1, idx[p], vals[p])
    return out


def aggregate_tensor(
    parts: Sequence[CompressedTensor], combine: str = "mean", clip_to_median: bool = True
) -> torch.Tensor:
    """Aggregate one tensor's updates from P peers into a float32 tensor of the original shape."""
    if not parts:
        raise ValueError("aggregate needs at least one peer's update")
    lay = parts[0].layout
    if any(p.layout != lay for p in parts):
        raise InvalidMessage(f"peers disagree on the layout of a tensor of shape {lay.shape}")
    vals = _peer_values(parts)
    peers = vals.shape[0]
    scale = clip_scales(vals.reshape(peers, -1).norm(dim=1), clip_to_median)
    if not lay.sparse:
        total = (vals * scale[:, None]).sum(dim=0)
        return total.div_(peers).reshape(lay.shape)
    if combine == "mean":
        vals = vals * (scale / peers)[:, None, None]
        return lay.from_chunks(_scatter_sum(lay, torch.stack([p.idx for p in parts]), vals))
    if combine != "scatter_mean":
        raise ValueError(f"combine must be 'mean' or 'scatter_mean', not {combine!r}")
    idx = torch.stack([p.idx for p in parts])
    total = _scatter_sum(lay, idx, vals * scale[:, None, None])
    counts = _scatter_sum(lay, idx, torch.ones_like(vals))
    return lay.from_chunks(total.div_(counts.clamp_min_(1)))


def aggregate(
    updates: Sequence[Mapping[str, CompressedTensor]], combine: str = "mean", clip_to_median: bool = True
) -> dict[str, torch.Tensor]:
    """Aggregate P peers' updates (each ``{name: CompressedTensor}``, same names) tensor by tensor.

    The order of ``updates`` is part of the result's last bits: callers sort peers canonically
    (e.g. by hotkey) so that every node computes identical weights.
    """
    if not updates:
        raise ValueError("aggregate needs at least one peer's update")
    names = sorted(updates[0])
    if any(sorted(u) != names for u in updates[1:]):
        raise InvalidMessage("peers' updates cover different sets of tensors")
    return {n: aggregate_tensor([u[n] for u in updates], combine, clip_to_median) for n in names}


@torch.no_grad()
def outer_step(params: Mapping[str, torch.Tensor], agg: Mapping[str, torch.Tensor], lr: float) -> None:
    """SparseLoCo's outer step: ``θ ← θ − lr · aggregate`` for every aggregated tensor."""
    for name, update in agg.items():
        p = params[name]
        p.sub_(update.to(device=p.device, dtype=p.dtype), alpha=lr)
