"""Validator behaviours: what a validator does with the weights it sets. The honest validator is
:class:`ValidatorBehaviour` itself; the built-in dishonest or careless ones (and users' own
experiments) subclass it and override :meth:`ValidatorBehaviour.weights` or set its attributes.

``ctx`` (a :class:`WeightsContext`) offers: ``window``, ``hotkey`` and ``uid`` (this validator's),
``uids`` (every registered hotkey → uid), ``peers`` (the uids of peers with a bucket card),
``stakes`` (uid → stake), ``chain_weights()`` (the weights every validator has set that the chain
shows now — with commit-reveal on, only revealed ones — by validator uid) and ``rng`` (a seeded
``random.Random``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from peers.node.plugins import load_plugin


@dataclass
class WeightsContext:
    window: int
    hotkey: str
    uid: int
    uids: dict[str, int]
    peers: list[int]
    stakes: dict[int, float]
    chain_weights: Callable[[], dict[int, dict[int, float]]]
    rng: random.Random


class ValidatorBehaviour:
    """The honest validator: evaluates every window and sets the weights its scores give.

    Class attributes a subclass may set: ``evaluates`` (False: gathers, tests and publishes nothing —
    no peer list, aggregate or checkpoint, so nobody follows it — and only sets weights),
    ``stop_window`` (the window after which it stops, see :meth:`stops_after`).
    """

    name = "honest"
    evaluates = True
    stop_window: int | None = None

    def weights(self, ctx: WeightsContext, proposed: dict[int, float] | None) -> dict[int, float] | None:
        """The weights to set (uid → weight, any positive scale) given the ones its scores propose
        (None when it evaluates nothing or has no positive score yet); None sets nothing."""
        return proposed

    def stops_after(self, last_window: int | None) -> int | None:
        """The last window this validator works on (None: it runs to ``last_window``, the run's end)."""
        return self.stop_window


class WeightCopier(ValidatorBehaviour):
    """Evaluates nothing; sets the stake-weighted mean of the weights the other validators have on
    chain (with commit-reveal on, the last revealed ones: an epoch or more old)."""

    name = "weight-copier"
    evaluates = False

    def weights(self, ctx: WeightsContext, proposed: dict[int, float] | None) -> dict[int, float] | None:
        mixed: dict[int, float] = {}
        for validator, row in ctx.chain_weights().items():
            total, stake = sum(row.values()), ctx.stakes.get(validator, 0.0)
            if validator == ctx.uid or total <= 0 or stake <= 0:
                continue
            for uid, w in row.items():
                mixed[uid] = mixed.get(uid, 0.0) + stake * w / total
        return {u: w for u, w in mixed.items() if w > 0} or None


class Colluder(ValidatorBehaviour):
    """Evaluates honestly, then gives ``share`` (half) of its weight to one chosen peer, ``target``
    (a hotkey; the simulation picks the free-rider)."""

    name = "colluder"
    share = 0.5
    target: str | None = None

    def weights(self, ctx: WeightsContext, proposed: dict[int, float] | None) -> dict[int, float] | None:
        friend = ctx.uids.get(self.target) if self.target else None
        if friend is None:
            return proposed
        total = sum((proposed or {}).values())
        mixed = {u: (1 - self.share) * w / total for u, w in (proposed or {}).items()} if total > 0 else {}
        mixed[friend] = mixed.get(friend, 0.0) + (self.share if total > 0 else 1.0)
        return mixed


class Lazy(ValidatorBehaviour):
    """Evaluates nothing; spreads its weight evenly over every peer with a bucket card."""

    name = "lazy"
    evaluates = False

    def weights(self, ctx: WeightsContext, proposed: dict[int, float] | None) -> dict[int, float] | None:
        return {u: 1.0 for u in ctx.peers} or None


class Crash(ValidatorBehaviour):
    """Evaluates honestly until ``stop_window`` (default: the middle of the run), then stops for good."""

    name = "crash"

    def stops_after(self, last_window: int | None) -> int | None:
        if self.stop_window is not None:
            return self.stop_window
        return None if last_window is None else last_window // 2


BUILT_IN: dict[str, type[ValidatorBehaviour]] = {
    cls.name: cls for cls in (ValidatorBehaviour, WeightCopier, Colluder, Lazy, Crash)
}


def load_validator_behaviour(spec: str) -> ValidatorBehaviour:
    """A built-in validator behaviour by name, or a user's ``module:Class`` subclass of
    :class:`ValidatorBehaviour`."""
    return load_plugin(spec, BUILT_IN, ValidatorBehaviour, "validator behaviour")
