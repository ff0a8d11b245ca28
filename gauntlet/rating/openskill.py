"""One OpenSkill Plackett–Luce match per window among the peers evaluated in it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Rating:
    mu: float
    sigma: float

    @property
    def ordinal(self) -> float:
        """``μ − 3σ``: a conservative skill estimate (0 for a new peer with the default prior)."""
        return self.mu - 3 * self.sigma


def rate_match(ratings: Mapping[str, Rating], scores: Mapping[str, float], *, mu: float = 25.0,
               sigma: float = 25.0 / 3, beta: float = 7.0, tau: float = 0.1) -> dict[str, Rating]:
    """Update the ratings of the peers in ``scores`` from one match ranked by score (higher wins).
    Peers without a rating start at ``(mu, sigma)``. Returns the new ratings of the players only."""
    from openskill.models import PlackettLuce  # deferred: the [node] extra

    players = sorted(scores)
    if len(players) < 2:
        return {p: ratings.get(p, Rating(mu, sigma)) for p in players}
    model = PlackettLuce(mu=mu, sigma=sigma, beta=beta, tau=tau)
    teams = [[model.create_rating([ratings.get(p, Rating(mu, sigma)).mu, ratings.get(p, Rating(mu, sigma)).sigma],
                                  name=p)] for p in players]
    result = model.rate(teams, scores=[scores[p] for p in players])
    return {p: Rating(team[0].mu, team[0].sigma) for p, team in zip(players, result)}
