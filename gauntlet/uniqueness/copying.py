"""Copy detection across all gathered peers (docs/protocol.md §4), vectorised.

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


SMALL_GROUP = 16  # positions shared by at most this many peers are paired one by one; busier ones by matmul
BLOCK_BYTES = 64 << 20  # memory of one dense block of busy positions


def pair_stats(keys: torch.Tensor, values: torch.Tensor) -> CopyStats:
    """Overlap and value cosine of every pair of peers from ``(P, K)`` global position keys (distinct
    within a row) and the values kept there: what :func:`copy_stats` computes once keys are known,
    and what the sampled detector (:mod:`gauntlet.uniqueness.sampled`) computes on a sample.

    After one sort, a position shared by ``s`` peers is a run of ``s`` equal keys. Runs of at most
    ``SMALL_GROUP`` are paired by comparing each entry with the one ``d`` places later (d < 16);
    positions that more peers share (many peers sending the same indices — sybils, or strongly
    correlated updates) are accumulated as dense matrix products over blocks of those positions, so
    the cost stays O(N log N + 16 N + P² · busy positions) instead of growing with P for every entry."""
    peers, kept = keys.shape
    if peers == 0 or kept == 0:
        eye = torch.eye(peers)
        return CopyStats(eye, eye.clone())
    flat_keys, order = _compact(keys).reshape(-1).sort()
    owner = order // kept
    value = values.reshape(-1).float()[order]
    del order
    ends = torch.ones_like(flat_keys, dtype=torch.bool)  # the last entry of each run of equal keys
    ends[:-1] = flat_keys[1:] != flat_keys[:-1]
    del flat_keys
    last = ends.nonzero().view(-1)
    run = ends.cumsum(0, dtype=torch.int32)
    run[ends] -= 1  # run number of each entry
    del ends
    later = last[run] - torch.arange(run.numel())  # entries after this one in its run
    busy = None
    if int(later.max()) >= SMALL_GROUP:  # some position is shared by more than SMALL_GROUP peers
        first = torch.cat([last.new_zeros(1), last[:-1] + 1])
        busy = (last - first + 1)[run] > SMALL_GROUP
        later.masked_fill_(busy, 0)  # paired by matmul below
    del last
    shared = torch.zeros(peers * peers, dtype=torch.float64)
    dots, norm_i = torch.zeros_like(shared), torch.zeros_like(shared)
    _pairs_in_runs(owner, value, later, peers, shared, dots, norm_i)
    if busy is not None:
        _pairs_by_matmul(run[busy], owner[busy], value[busy], peers, shared, dots, norm_i)
    del owner, value, run, later
    shared, dots, norm_i = (t.view(peers, peers) for t in (shared, dots, norm_i))
    shared.fill_diagonal_(float(kept))
    cosine = dots / (norm_i * norm_i.t()).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    cosine.fill_diagonal_(1.0)
    return CopyStats((shared / kept).float(), torch.where(shared > 0, cosine, 0.0).float())


def _compact(keys: torch.Tensor) -> torch.Tensor:
    """The same equalities with smaller numbers: int32 ranks of the distinct keys when they fit (a
    32-bit sort moves half the bytes of a 64-bit one)."""
    lo, hi = int(keys.min()), int(keys.max())
    return (keys - lo).to(torch.int32) if hi - lo < 2**31 - 1 else keys


def _pairs_in_runs(owner, value, later, peers, shared, dots, norm_i) -> None:
    """Pair every entry with the one ``d`` places later while both are in one run (``later``: how many
    entries follow each one in its run; 0 for runs left to the matmul), d = 1, 2, … < SMALL_GROUP.
    Each step reads only the entries that have a partner at that distance, in order."""
    limit = min(SMALL_GROUP, peers)
    with_partner = torch.bincount(later.clamp(max=limit), minlength=limit + 1).flip(0).cumsum(0).flip(0)
    cells = peers * peers
    row = owner * peers  # the cell row of each entry's peer
    counts = torch.zeros(cells, dtype=torch.int64)
    # float32 sums of float32 products (at most K terms a pair): ~1e-5 relative, far finer than 0.95
    half_dots, norm_left, norm_right = (torch.zeros(cells, dtype=torch.float32) for _ in range(3))
    for d in range(1, limit):  # with_partner[d]: entries with a partner d places later
        if int(with_partner[d]) == 0:
            break
        left = (later >= d).nonzero().view(-1)
        right = left + d
        va, vb = value[left], value[right]
        ab = row[left] + owner[right]  # one order now; the transpose is added at the end
        counts += torch.bincount(ab, minlength=cells)
        half_dots.index_add_(0, ab, va * vb)
        norm_left.index_add_(0, ab, va * va)
        norm_right.index_add_(0, ab, vb * vb)
    view = (peers, peers)
    half = counts.double().view(view)
    shared.add_((half + half.t()).view(-1))
    half = half_dots.double().view(view)
    dots.add_((half + half.t()).view(-1))
    norm_i.add_((norm_left.double().view(view) + norm_right.double().view(view).t()).reshape(-1))


def _pairs_by_matmul(group, owner, value, peers, shared, dots, norm_i) -> None:
    """Positions shared by many peers: per block of positions, a dense (P, B) matrix of who kept
    each one (A) and the values (V); shared += A·Aᵀ, dots += V·Vᵀ, norm_i += (V∘V)·Aᵀ (diagonals are
    overwritten by the caller)."""
    column = torch.unique_consecutive(group, return_inverse=True)[1]
    columns = int(column[-1]) + 1
    block = max(1, BLOCK_BYTES // (8 * peers))
    view = (peers, peers)
    for c0 in range(0, columns, block):  # bounded memory; a handful of blocks in practice
        c1 = min(columns, c0 + block)
        lo, hi = torch.searchsorted(column, torch.tensor([c0, c1]))
        col, who, val = column[lo:hi] - c0, owner[lo:hi], value[lo:hi]
        a = torch.zeros((peers, c1 - c0), dtype=torch.float64)
        v = torch.zeros_like(a)
        a[who, col] = 1.0
        v[who, col] = val.double()
        shared.view(view).add_(a @ a.t())
        dots.view(view).add_(v @ v.t())
        norm_i.view(view).add_((v * v) @ a.t())


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
