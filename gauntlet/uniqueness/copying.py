"""Copy detection across all gathered peers (PROTOCOL §4), vectorised.

Every kept value of every peer gets a global key (tensor offset + chunk · chunk_size + index). After
one sort of all keys, entries at the same position are adjacent; comparing each entry with the one
``d`` places later (d = 1, 2, … up to the largest group, at most P) finds every pair of peers that
share a position, and ``index_add`` accumulates, for every pair at once:

- ``overlap[i, j]`` = positions both selected / values each kept — the size-weighted mean of the
  per-chunk top-k overlap;
- ``cosine[i, j]``  = cosine similarity of the two peers' decoded values on their shared positions,
  which still exposes a copier who perturbs the values or drops some indices.

Cost: O(N log N + N · g) for N kept values in total and g the largest number of peers sharing a
position (a few for independent peers; P only if everyone sent the same update). The reference
compares chunk pairs element by element, O(P² · C · k²). Dense tensors are not compared (they are
tiny and everyone sends them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from gauntlet.sparseloco.compress import CompressedTensor


@dataclass(frozen=True)
class CopyStats:
    overlap: torch.Tensor  # (P, P), 1 on the diagonal
    cosine: torch.Tensor  # (P, P), cosine of values on shared positions (0 where nothing is shared)


def copy_stats(updates: Sequence[Mapping[str, CompressedTensor]]) -> CopyStats:
    peers = len(updates)
    keys, vals, offset = [], [], 0
    for name in sorted(updates[0]) if updates else []:
        lay = updates[0][name].layout
        if not lay.sparse:
            continue
        base = offset + torch.arange(lay.num_chunks).view(1, -1, 1) * lay.chunk_numel
        idx = torch.stack([u[name].idx for u in updates])
        codes = torch.stack([u[name].codes for u in updates])
        lookups = torch.stack([u[name].lookup for u in updates])
        keys.append((base + idx).reshape(peers, -1))
        vals.append(lookups.gather(1, codes.reshape(peers, -1).long()))
        offset += lay.num_chunks * lay.chunk_numel
    if not keys or peers == 0:
        eye = torch.eye(peers)
        return CopyStats(eye, eye.clone())
    return pair_stats(torch.cat(keys, dim=1), torch.cat(vals, dim=1))


def pair_stats(keys: torch.Tensor, values: torch.Tensor) -> CopyStats:
    """Overlap and value cosine of every pair of peers from ``(P, K)`` global position keys (distinct
    within a row) and the values kept there: what :func:`copy_stats` computes once keys are known,
    and what the sampled detector (:mod:`gauntlet.uniqueness.sampled`) computes on a sample."""
    peers, kept = keys.shape
    if peers == 0 or kept == 0:
        eye = torch.eye(peers)
        return CopyStats(eye, eye.clone())
    flat_keys, order = keys.reshape(-1).sort()
    owner = torch.arange(peers).repeat_interleave(kept)[order]
    value = values.reshape(-1).double()[order]
    del order
    shared = torch.zeros(peers * peers, dtype=torch.float64)
    dots, norm_i = torch.zeros_like(shared), torch.zeros_like(shared)
    # Entries with equal keys are adjacent; compare each with the one d places later for d = 1, 2, ...
    # until no group is that long (at most P: a peer never repeats a key).
    for d in range(1, peers):
        same = flat_keys[d:] == flat_keys[:-d]
        if not bool(same.any()):
            break
        a, b = owner[:-d][same], owner[d:][same]
        va, vb = value[:-d][same], value[d:][same]
        for i, j, vi, vj in ((a, b, va, vb), (b, a, vb, va)):  # both orders: a symmetric matrix
            pair = i * peers + j
            shared.index_add_(0, pair, torch.ones_like(vi))
            dots.index_add_(0, pair, vi * vj)
            norm_i.index_add_(0, pair, vi * vi)
    shared, dots, norm_i = (t.view(peers, peers) for t in (shared, dots, norm_i))
    shared.fill_diagonal_(float(kept))
    cosine = dots / (norm_i * norm_i.t()).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    cosine.fill_diagonal_(1.0)
    return CopyStats((shared / kept).float(), torch.where(shared > 0, cosine, 0.0).float())


@dataclass(frozen=True)
class CopyFinding:
    offender: str
    original: str
    overlap: float
    cosine: float


def find_copies(hotkeys: Sequence[str], stats: CopyStats, upload_times: Mapping[str, float], *,
                threshold: float = 0.4, value_similarity: float = 0.95) -> list[CopyFinding]:
    """Pairs that look copied: overlap ≥ ``threshold``, or overlap ≥ threshold/2 with values nearly
    identical on the shared positions. The later uploader (ties: the larger hotkey) is the offender;
    each offender is reported once, with its worst pair."""
    worst: dict[str, CopyFinding] = {}
    n = len(hotkeys)
    for i in range(n):
        for j in range(i + 1, n):
            ov, cos = float(stats.overlap[i, j]), float(stats.cosine[i, j])
            if not (ov >= threshold or (ov >= threshold / 2 and cos >= value_similarity)):
                continue
            a, b = hotkeys[i], hotkeys[j]
            later = max((a, b), key=lambda h: (upload_times.get(h, float("inf")), h))
            finding = CopyFinding(later, b if later == a else a, ov, cos)
            if later not in worst or ov > worst[later].overlap:
                worst[later] = finding
    return [worst[h] for h in sorted(worst)]
