"""Model fingerprints: a hash of the weights that lets any node check it is in sync (docs/protocol.md §3).

``fingerprint = sha256( for each tensor in name order: "name|dtype|shape|" + leaf digests )`` where
a tensor of rank ≥ 2 has one leaf per dim-0 row (``sha256`` of the row's bytes) and a smaller tensor
one leaf for all its bytes. Rows are what a ``Shard(0)`` rank holds, so a node sharded over N ranks
computes the leaves of its rows where they are and gathers 32 bytes per row: the fingerprint is the
same whatever N, and no rank needs a whole tensor (1-D tensors, which are small, are gathered).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import torch


def raw_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def row_digests(t: torch.Tensor) -> bytes:
    """The concatenated sha256 of every dim-0 row of ``t`` (rank ≥ 2), 32 bytes per row."""
    data, rows = raw_bytes(t), t.shape[0]
    if rows == 0:
        return b""
    step = len(data) // rows
    view = memoryview(data)
    return b"".join(hashlib.sha256(view[i * step:(i + 1) * step]).digest() for i in range(rows))


def leaves(t: torch.Tensor) -> bytes:
    """The leaf digests of a whole tensor."""
    return row_digests(t) if t.dim() >= 2 else hashlib.sha256(raw_bytes(t)).digest()


def compose(entries: Iterable[tuple[str, torch.dtype, tuple[int, ...], bytes]]) -> str:
    """The fingerprint from (name, dtype, whole shape, leaf digests) of every tensor, in name order."""
    h = hashlib.sha256()
    for name, dtype, shape, digests in sorted(entries, key=lambda e: e[0]):
        h.update(f"{name}|{dtype}|{tuple(shape)}|".encode())
        h.update(digests)
    return h.hexdigest()


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """The fingerprint of whole tensors. Equal fingerprints mean bit-identical weights."""
    return compose((n, t.dtype, tuple(t.shape), leaves(t)) for n, t in tensors.items())
