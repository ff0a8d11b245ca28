"""Weight policies: how final scores become the weights a validator sets on chain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gauntlet.config import ValidatorConfig


def power_weights(finals: Mapping[int, float], p: float = 2.2) -> dict[int, float]:
    """``w ∝ final^p`` over the positive finals (the 1.2B run); nothing when no final is positive."""
    powered = {uid: f**p for uid, f in finals.items() if f > 0}
    total = sum(powered.values())
    return {uid: w / total for uid, w in sorted(powered.items())} if total > 0 else {}


def tiered_weights(ranked: Sequence[int], *, burn_uid: int, burn_share: float = 0.5, top: int = 20,
                   top_share: float = 0.75, ramp: float = 2.0, next_n: int = 10,
                   decay: float = 0.5) -> dict[int, float]:
    """The 72B run's policy. ``ranked``: eligible uids (positive final score), best first.

    ``burn_share`` goes to ``burn_uid``. Of the rest, ``top_share`` goes to the first ``top`` on a
    linear ramp (the first gets ``ramp`` times the last), the remainder to the next ``next_n``
    decaying by ``decay`` per rank. A tier with nobody in it passes its share to the other tier, and
    with no eligible peer at all everything is burned.
    """
    weights: dict[int, float] = {burn_uid: burn_share}
    rest = 1.0 - burn_share
    head, tail = list(ranked[:top]), list(ranked[top : top + next_n])
    if not head:
        return {burn_uid: 1.0}
    head_share = rest * (top_share if tail else 1.0)
    tail_share = rest - head_share
    n = len(head)
    ramp_values = [ramp - (ramp - 1.0) * i / (top - 1) if top > 1 else 1.0 for i in range(n)]
    total = sum(ramp_values)
    for uid, v in zip(head, ramp_values):
        weights[uid] = weights.get(uid, 0.0) + head_share * v / total
    decays = [decay**i for i in range(len(tail))]
    for uid, v in zip(tail, decays):
        weights[uid] = weights.get(uid, 0.0) + tail_share * v / sum(decays)
    return weights


def policy_weights(finals: Mapping[int, float], cfg: ValidatorConfig) -> dict[int, float]:
    """The weights ``cfg.policy`` gives final scores (uid → final): ``power`` or ``tiered``."""
    if cfg.policy == "power":
        return power_weights(finals, cfg.power_p)
    ranked = [u for u, f in sorted(finals.items(), key=lambda kv: (-kv[1], kv[0])) if f > 0]
    return tiered_weights(ranked, burn_uid=cfg.burn_uid, burn_share=cfg.burn_share, top=cfg.tier_top,
                          top_share=cfg.tier_top_share, ramp=cfg.tier_ramp, next_n=cfg.tier_next, decay=cfg.tier_decay)
