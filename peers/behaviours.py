"""Behaviours: what a peer does with its window. The honest peer is :class:`Behaviour` itself;
adversaries (and users' own experiments) subclass it and override one or both hooks.

``ctx`` (a :class:`WindowContext`) offers: ``window``, ``hotkey``, ``model`` (weights at the start
of the window; read-only), ``train(batches) -> Δ`` (trains a copy's worth of inner steps from those
weights and returns the pseudo-gradient, leaving the model as it was), ``assigned_batches()``,
``random_batches(n)``, ``peer_updates(window) -> {hotkey: Δ}`` (decoded updates other peers have
published so far), ``previous_aggregate()`` and ``rng`` (a seeded ``random.Random``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class WindowContext:
    window: int
    hotkey: str
    model: torch.nn.Module
    train: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]
    assigned_batches: Callable[[], list[torch.Tensor]]
    random_batches: Callable[[int], list[torch.Tensor]]
    peer_updates: Callable[[int], dict[str, dict[str, torch.Tensor]]]
    previous_aggregate: Callable[[], dict[str, torch.Tensor] | None]
    rng: random.Random


class Behaviour:
    """The honest peer: train on the assigned data, send the result unchanged."""

    name = "honest"

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        """Δ to compress and upload for this window, or None to upload nothing."""
        return ctx.train(ctx.assigned_batches())

    def tamper(self, ctx: WindowContext, data: bytes) -> bytes | None:
        """The bytes actually uploaded (default: the encoded message unchanged; None: nothing)."""
        return data
