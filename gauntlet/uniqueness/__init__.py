"""Uniqueness of work: deterministic data assignment (and, later, copy detection)."""

from gauntlet.uniqueness.assignment import assigned_indices, own_eval_indices

__all__ = ["assigned_indices", "own_eval_indices"]
