"""Ratings and weights (docs/protocol.md §4): OpenSkill Plackett–Luce ratings and the two weight policies."""

from gauntlet.rating.book import PeerRecord, WindowOutcome, update_book
from gauntlet.rating.openskill import Rating, rate_match
from gauntlet.rating.weights import policy_weights, power_weights, tiered_weights

__all__ = ["PeerRecord", "Rating", "WindowOutcome", "policy_weights", "power_weights", "rate_match", "tiered_weights",
           "update_book"]
