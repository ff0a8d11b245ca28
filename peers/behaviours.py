"""Behaviours: what a peer does with its window. The honest peer is :class:`Behaviour` itself;
adversaries (and users' own experiments) subclass it and override one or both hooks.

``ctx`` (a :class:`WindowContext`) offers: ``window``, ``hotkey``, ``model`` (weights at the start
of the window; read-only), ``train(batches) -> Δ`` (trains a copy's worth of inner steps from those
weights and returns the pseudo-gradient, leaving the model as it was), ``assigned_batches()``,
``random_batches(n)`` (the window's shared random batches), ``unassigned_batches(n)`` (sequences
of the node's own choosing), ``peer_updates(window) -> {hotkey: Δ}`` (decoded updates other peers have
published so far), ``previous_aggregate()`` and ``rng`` (a seeded ``random.Random``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from peers.node.plugins import load_plugin


@dataclass
class WindowContext:
    window: int
    hotkey: str
    model: torch.nn.Module
    train: Callable[[list[torch.Tensor]], dict[str, torch.Tensor]]
    assigned_batches: Callable[[], list[torch.Tensor]]
    random_batches: Callable[[int], list[torch.Tensor]]
    unassigned_batches: Callable[[int], list[torch.Tensor]]  # n batches of sequences of this node's choosing
    peer_updates: Callable[[int], dict[str, dict[str, torch.Tensor]]]
    previous_aggregate: Callable[[], dict[str, torch.Tensor] | None]
    rng: random.Random


class Behaviour:
    """The honest peer: train on the assigned data, send the result unchanged.

    Class attributes a subclass may set: ``waits_for_others`` (computes its update only after the
    other peers of the window have uploaded — copiers), ``upload_delay_s`` (seconds after the window
    boundary at which it uploads).
    """

    name = "honest"
    waits_for_others = False
    upload_delay_s = 0.0

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        """Δ to compress and upload for this window, or None to upload nothing."""
        return ctx.train(ctx.assigned_batches())

    def tamper(self, ctx: WindowContext, data: bytes) -> bytes | None:
        """The bytes actually uploaded (default: the encoded message unchanged; None: nothing)."""
        return data

    def keeps_in_sync(self, ctx: WindowContext) -> bool:
        """Whether the node applies this window's outer step (default: yes)."""
        return True


# --------------------------------------------------------------------------------------- adversaries


class FreeRider(Behaviour):
    """Registers and publishes a card, but never does or uploads any work."""

    name = "free-rider"

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        return None


class Copier(Behaviour):
    """Waits for another peer's upload and re-sends its update under its own key."""

    name = "copier"
    waits_for_others = True

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        others = ctx.peer_updates(ctx.window)
        if not others:
            return None
        return others[sorted(others)[ctx.rng.randrange(len(others))]]


class NoisyCopier(Copier):
    """Copies another peer's update and adds noise (30 % of its scale) to disguise it."""

    name = "noisy-copier"

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        copied = super().pseudo_gradient(ctx)
        if copied is None:
            return None
        g = torch.Generator().manual_seed(ctx.rng.randrange(2**31))
        return {n: d + 0.3 * d.std() * torch.randn(d.shape, generator=g) for n, d in copied.items()}


class RandomDataTrainer(Behaviour):
    """Trains honestly, but on sequences of its own choosing instead of its assignment."""

    name = "random-data"

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        return ctx.train(ctx.unassigned_batches(len(ctx.assigned_batches())))


class Noise(Behaviour):
    """Sends Gaussian noise shaped like an honest update."""

    name = "noise"

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        honest = ctx.train(ctx.assigned_batches())
        g = torch.Generator().manual_seed(ctx.rng.randrange(2**31))
        return {n: d.std() * torch.randn(d.shape, generator=g) for n, d in honest.items()}


class SignFlip(Behaviour):
    """Trains honestly and sends the opposite update."""

    name = "sign-flip"

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        return {n: -d for n, d in ctx.train(ctx.assigned_batches()).items()}


class Stale(Behaviour):
    """Trains and uploads, but stops applying the network's outer steps: its weights fall behind."""

    name = "stale"

    def keeps_in_sync(self, ctx: WindowContext) -> bool:
        return ctx.window < 1


class LateUploader(Behaviour):
    """Trains honestly but uploads after the upload slot has closed."""

    name = "late"
    upload_delay_s = float("inf")  # beyond the slot: nodes upload just after it closes


class Malformed(Behaviour):
    """Uploads bytes that are not a valid message (a truncated one)."""

    name = "malformed"

    def tamper(self, ctx: WindowContext, data: bytes) -> bytes | None:
        return data[: len(data) // 2]


class Amplifier(Behaviour):
    """Trains honestly and sends its update multiplied by ``factor`` (4): a bigger step, hoping that
    the loss test rewards size. The aggregate clips every update to the window's median norm and the
    loss test measures it the same way, so it earns no more than an honest peer."""

    name = "amplifier"
    factor = 4.0

    def pseudo_gradient(self, ctx: WindowContext) -> dict[str, torch.Tensor] | None:
        return {n: d * self.factor for n, d in ctx.train(ctx.assigned_batches()).items()}


BUILT_IN: dict[str, type[Behaviour]] = {
    cls.name: cls for cls in (Behaviour, FreeRider, Copier, NoisyCopier, RandomDataTrainer, Noise, SignFlip, Stale,
                              LateUploader, Malformed, Amplifier)
}


def load_behaviour(spec: str) -> Behaviour:
    """A built-in behaviour by name, or a user's ``module:Class`` subclass of :class:`Behaviour`."""
    return load_plugin(spec, BUILT_IN, Behaviour, "behaviour")
