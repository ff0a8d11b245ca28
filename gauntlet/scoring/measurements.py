"""Stage 2, the loss test: the loss before and after applying one peer's update alone.

The update is applied scaled by ``eval_lr_factor × α`` to the validator's weights, the loss is
measured on the peer's own assigned sequences and on the window's shared random sequences, and the
touched weights are restored bit for bit from a copy. The loss on random data before the update is
the same for every peer of a window and is computed once, so one peer costs three forward passes of
the eval batches: own before, own after, random after.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from gauntlet.models import mean_loss


@dataclass(frozen=True)
class LossTest:
    own_before: float
    own_after: float
    random_before: float
    random_after: float


@torch.no_grad()
def loss_test(model: torch.nn.Module, update: Mapping[str, torch.Tensor], scale: float,
              own: Sequence[torch.Tensor], random: Sequence[torch.Tensor], random_before: float,
              bf16: bool = True) -> LossTest:
    """Measure a peer's update; the model's weights are exactly the same afterwards."""
    params = dict(model.named_parameters())
    own_before = mean_loss(model, own, bf16)
    backup = {n: params[n].detach().clone() for n in update}
    try:
        for n, u in update.items():  # u · scale rounded first: the same bits on whole tensors or shards
            params[n].sub_(u.to(device=params[n].device, dtype=params[n].dtype) * scale)
        own_after = mean_loss(model, own, bf16)
        random_after = mean_loss(model, random, bf16)
    finally:
        for n, saved in backup.items():
            params[n].copy_(saved)
    return LossTest(own_before, own_after, random_before, random_after)


def sample_positions(shapes: Mapping[str, tuple[int, ...]], count: int, seed: int = 0) -> list[tuple[str, int]]:
    """Where :func:`weight_sample` looks: ``count`` (tensor name, flat index) pairs fixed by ``seed``.

    Position i: h = first 8 bytes of sha256("gauntlet-sample|{seed}|{i}"); the tensor is picked in
    proportion to tensor sizes by h / 2**64, the element within it is h mod its size."""
    names = sorted(shapes)
    numel = [math.prod(shapes[n]) for n in names]
    sizes = torch.tensor(numel, dtype=torch.float64)
    hashes = [int.from_bytes(hashlib.sha256(f"gauntlet-sample|{seed}|{i}".encode()).digest()[:8], "big")
              for i in range(count)]
    targets = torch.tensor([h / 2**64 for h in hashes], dtype=torch.float64) * float(sizes.sum())
    which = torch.searchsorted(sizes.cumsum(0), targets, right=True).clamp_(max=len(names) - 1).tolist()
    return [(names[t], h % numel[t]) for t, h in zip(which, hashes)]


def weight_sample(params: Mapping[str, torch.Tensor], count: int, seed: int = 0) -> list[float]:
    """``count`` weights at positions fixed by ``seed`` (the same on every node, see
    :func:`sample_positions`): what peers publish with their fingerprint so a validator can tell how
    far behind they are, not just that they differ."""
    positions = sample_positions({n: tuple(p.shape) for n, p in params.items()}, count, seed)
    flat = {n: p.detach().reshape(-1) for n, p in params.items()}
    return [float(flat[n][i]) for n, i in positions]
