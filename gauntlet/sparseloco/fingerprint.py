"""Model fingerprints: a hash of the weights that lets any node check it is in sync (PROTOCOL §3)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 hex over every tensor's name, dtype, shape and raw bytes, in name order.

    Equal fingerprints mean bit-identical weights. Costs one pass over the weights (copied to CPU).
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
