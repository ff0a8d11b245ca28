"""The score formulas, each a pure function of numbers (docs/protocol.md §4)."""

from __future__ import annotations

import math


def sync_score(x: float, max_steps: float = 5.0, power: float = 2.5) -> float:
    """``max(0, 1 − min(x, max_steps)/max_steps) ** power``: 1 in sync, 0 at ``max_steps`` behind."""
    return max(0.0, 1.0 - min(max(x, 0.0), max_steps) / max_steps) ** power


def steps_behind(peer_sample: list[float], ref_sample: list[float], typical_step: float) -> float:
    """How many typical outer steps a peer's weight sample is from the validator's: the mean absolute
    difference divided by the mean absolute change one outer step makes to the same sample."""
    if len(peer_sample) != len(ref_sample) or not ref_sample:
        return math.inf
    diff = sum(abs(a - b) for a, b in zip(peer_sample, ref_sample)) / len(ref_sample)
    if not math.isfinite(diff):
        return math.inf
    if diff == 0:
        return 0.0
    return diff / typical_step if typical_step > 0 else math.inf


def relative_improvement(before: float, after: float) -> float:
    """``(before − after) / before``: the share of the loss an update removed (negative if it hurt)."""
    return (before - after) / before if before > 0 else 0.0


def uniqueness_indicator(own_improvement: float, random_improvement: float) -> int:
    """+1 when the update helps the peer's own (assigned) data more than shared random data, else −1."""
    return 1 if own_improvement > random_improvement else -1


def moving_average(previous: float, indicator: float, alpha: float = 0.05) -> float:
    """``(1 − α)·previous + α·indicator``."""
    return (1.0 - alpha) * previous + alpha * indicator


def final_score(ordinal: float, ma: float, sync: float, penalty: float = 1.0) -> float:
    """``ordinal × max(0, MA) × sync`` (× the peer's current penalty factor)."""
    return ordinal * max(0.0, ma) * sync * penalty
