"""Copy detection across all gathered peers (PROTOCOL §4), vectorised.

Every kept value of every peer gets a global key (tensor offset + chunk · chunk_size + index). One
``torch.unique`` over all keys gives, per position, the peers that selected it (a sparse P × U
incidence matrix M); sparse products then give for every pair at once:

- ``overlap[i, j]`` = positions both selected / values each kept — the size-weighted mean of the
  per-chunk top-k overlap;
- ``cosine[i, j]``  = cosine similarity of the two peers' decoded values on their shared positions,
  which still exposes a copier who perturbs the values or drops some indices.

Cost: O(N log N) for N kept values in total (the reference compares chunk pairs element by element,
O(P² · C · k²)). Dense tensors are not compared (they are tiny and everyone sends them).
"""

from __future__ import annotations

import warnings
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
    keys_all, vals_all = torch.cat(keys, dim=1), torch.cat(vals, dim=1).double()
    kept = keys_all.shape[1]
    _, row = torch.unique(keys_all.reshape(-1), return_inverse=True)
    col = torch.arange(peers).repeat_interleave(kept)
    n_rows = int(row.max()) + 1
    where = torch.stack([row, col])
    def sparse(v: torch.Tensor) -> torch.Tensor:  # (row, peer) pairs are unique: coalescing only sorts
        return torch.sparse_coo_tensor(where, v, (n_rows, peers), check_invariants=False).coalesce()

    ones, values = sparse(torch.ones(row.numel(), dtype=torch.float64)), sparse(vals_all.reshape(-1))
    squares = sparse(vals_all.reshape(-1) ** 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch flags its sparse kernels as beta
        shared = torch.sparse.mm(ones.t(), ones).to_dense()
        dots = torch.sparse.mm(values.t(), values).to_dense()
        norms = torch.sparse.mm(squares.t(), ones).to_dense()  # [i, j]: Σ v_i² over positions shared with j
    cosine = dots / (norms * norms.t()).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
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
