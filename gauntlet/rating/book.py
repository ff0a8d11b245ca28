"""The validator's book: every peer's rating, moving average, penalty and ban, updated once per
window by a pure function of what the window showed (docs/protocol.md §4).

Rules (documented choices where docs/protocol.md is silent are marked *):

- Present (valid, in the slot): ``last_seen = window``. *A present peer in sync recovers one
  penalty step: ``penalty = min(1, penalty / penalty_factor)``.
- Missing, late or invalid: ``penalty ×= penalty_factor`` (0.75) and, *to make the window's score
  zero, it joins the window's rating match ranked below every tested peer.
- Inactive for ``inactive_windows`` windows: reset to the prior (rating, MA 0, penalty 1).
- Sync: ``sync = sync_score(x)``; ``x > sync_penalty_steps`` also costs a penalty step.
- Copying (offender = later uploader): overlap ≥ ban → reset + ban; ≥ reset → reset; else ×0.5.
- Loss test: ``score`` = relative improvement on random data; indicator +1 if the relative
  improvement on its own data is larger; ``MA ← (1−α)·MA + α·indicator``.
- One Plackett–Luce match among the tested (and the failed) peers; ``final = ordinal × max(0, MA)
  × sync × penalty``; 0 while banned.
"""

from __future__ import annotations

import math

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from gauntlet.config import ValidatorConfig
from gauntlet.rating.openskill import Rating, rate_match
from gauntlet.scoring import LossTest, final_score, moving_average, relative_improvement, sync_score
from gauntlet.scoring.formulas import uniqueness_indicator
from gauntlet.uniqueness.copying import CopyFinding


@dataclass(frozen=True)
class PeerRecord:
    mu: float
    sigma: float
    ma: float = 0.0
    penalty: float = 1.0
    sync: float = 1.0
    last_eval: int = -1
    last_score: float = 0.0  # the score (gain on random data) of its last loss test
    last_seen: int = -1
    first_seen: int = -1
    banned_until: int = -1
    final: float = 0.0

    @property
    def ordinal(self) -> float:
        return Rating(self.mu, self.sigma).ordinal

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class WindowOutcome:
    window: int
    present: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # hotkey -> missing | late | invalid: reason
    steps_behind: dict[str, float] = field(default_factory=dict)  # NaN: unknown (its sample was unreadable)
    copies: Sequence[CopyFinding] = ()
    tests: Mapping[str, LossTest] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)  # the infrastructure's fault: never scored


def fresh(cfg: ValidatorConfig) -> PeerRecord:
    return PeerRecord(cfg.rating_mu, cfg.rating_sigma)


def update_book(book: Mapping[str, PeerRecord], outcome: WindowOutcome,
                cfg: ValidatorConfig) -> tuple[dict[str, PeerRecord], dict[str, dict]]:
    """The book after a window, and for every peer the factors behind its final score."""
    new, why = _presence(dict(book), outcome, cfg)
    _copies(new, why, outcome, cfg)
    scores = _loss_tests(new, why, outcome, cfg)
    _match(new, outcome, scores, cfg)
    _finals(new, why, outcome.window)
    return new, why


def _presence(new: dict[str, PeerRecord], outcome: WindowOutcome,
              cfg: ValidatorConfig) -> tuple[dict[str, PeerRecord], dict[str, dict]]:
    """Stage 1 for every known or seen peer: sync and penalty from presence; inactive peers reset."""
    w, why = outcome.window, {}
    for hotkey in sorted(set(new) | outcome.present | set(outcome.failed)):
        rec = new.get(hotkey) or replace(fresh(cfg), first_seen=w)
        note: dict = {"window": w}
        if hotkey in outcome.present and math.isnan(outcome.steps_behind.get(hotkey, 0.0)):
            rec = replace(rec, last_seen=w)  # no evidence either way: sync and penalty stay as they were
            note.update(status="present", steps_behind="unknown")
        elif hotkey in outcome.present:
            x = outcome.steps_behind.get(hotkey, 0.0)
            sync = sync_score(x, cfg.sync_max_steps, cfg.sync_power)
            penalty = rec.penalty * cfg.penalty if x > cfg.sync_penalty_steps else min(1.0, rec.penalty / cfg.penalty)
            rec = replace(rec, last_seen=w, sync=sync, penalty=penalty)
            note.update(status="present", steps_behind=x if x != float("inf") else "inf")
        elif hotkey in outcome.failed:
            rec = replace(rec, penalty=rec.penalty * cfg.penalty)
            note.update(status=outcome.failed[hotkey])
        elif hotkey in outcome.unreachable:
            note.update(status=f"unreachable: {outcome.unreachable[hotkey]}")
        else:
            note.update(status="absent")
        if rec.last_seen < w - cfg.inactive_windows + 1 and rec.first_seen <= w - cfg.inactive_windows:
            rec = replace(fresh(cfg), first_seen=w, last_seen=rec.last_seen, banned_until=rec.banned_until)
            note["reset"] = "inactive"
        new[hotkey] = rec
        why[hotkey] = note
    return new, why


def _copies(new: dict[str, PeerRecord], why: dict[str, dict], outcome: WindowOutcome, cfg: ValidatorConfig) -> None:
    """Each offender of a copy finding: a penalty, a reset, or a reset and a ban, by overlap."""
    for finding in outcome.copies:
        rec = new[finding.offender]
        note = why[finding.offender]
        note["copy"] = {"of": finding.original, "overlap": round(finding.overlap, 4),
                        "cosine": round(finding.cosine, 4)}
        if finding.overlap >= cfg.copy_ban:
            rec = replace(fresh(cfg), first_seen=rec.first_seen, last_seen=rec.last_seen,
                          banned_until=outcome.window + cfg.copy_ban_windows)
            note["copy"]["action"] = "reset+ban"
        elif finding.overlap >= cfg.copy_reset:
            rec = replace(fresh(cfg), first_seen=rec.first_seen, last_seen=rec.last_seen,
                          banned_until=rec.banned_until)
            note["copy"]["action"] = "reset"
        else:
            rec = replace(rec, penalty=rec.penalty * cfg.copy_penalty)
            note["copy"]["action"] = "penalty"
        new[finding.offender] = rec


def _loss_tests(new: dict[str, PeerRecord], why: dict[str, dict], outcome: WindowOutcome,
                cfg: ValidatorConfig) -> dict[str, float]:
    """Stage 2: each tested peer's uniqueness moving average; returns its score (gain on random data)."""
    scores: dict[str, float] = {}
    for hotkey, test in outcome.tests.items():
        rec = new[hotkey]
        random_gain = relative_improvement(test.random_before, test.random_after)
        own_gain = relative_improvement(test.own_before, test.own_after)
        indicator = uniqueness_indicator(own_gain, random_gain)
        new[hotkey] = replace(rec, ma=moving_average(rec.ma, indicator, cfg.ma_alpha), last_eval=outcome.window,
                              last_score=random_gain)
        scores[hotkey] = random_gain
        why[hotkey].update(score=random_gain, own_gain=own_gain, indicator=indicator)
    return scores


def _match(new: dict[str, PeerRecord], outcome: WindowOutcome, scores: dict[str, float],
           cfg: ValidatorConfig) -> None:
    """One OpenSkill match of the window: tested peers by score, failed (unbanned) peers below them all."""
    failed = [h for h in outcome.failed if new[h].banned_until < outcome.window]
    if scores or failed:
        floor = min([0.0, *scores.values()]) - 1.0
        match = {**scores, **{h: floor for h in failed}}
        rated = rate_match({h: Rating(new[h].mu, new[h].sigma) for h in match}, match, mu=cfg.rating_mu,
                           sigma=cfg.rating_sigma, beta=cfg.rating_beta, tau=cfg.rating_tau)
        for hotkey, rating in rated.items():
            new[hotkey] = replace(new[hotkey], mu=rating.mu, sigma=rating.sigma)


def _finals(new: dict[str, PeerRecord], why: dict[str, dict], window: int) -> None:
    """Every peer's final score (zero while banned), with all its factors noted."""
    for hotkey, rec in new.items():
        banned = rec.banned_until >= window
        final = 0.0 if banned else final_score(rec.ordinal, rec.ma, rec.sync, rec.penalty)
        new[hotkey] = replace(rec, final=final)
        why.setdefault(hotkey, {"window": window, "status": "absent"}).update(
            ordinal=rec.ordinal, mu=rec.mu, sigma=rec.sigma, ma=rec.ma, sync=rec.sync, penalty=rec.penalty,
            banned=banned, final=final)
