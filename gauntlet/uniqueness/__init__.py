"""Uniqueness of work: deterministic data assignment and copy detection."""

from gauntlet.uniqueness.assignment import assigned_indices, own_eval_indices
from gauntlet.uniqueness.copying import CopyFinding, CopyStats, copy_stats, find_copies

__all__ = ["CopyFinding", "CopyStats", "assigned_indices", "copy_stats", "find_copies", "own_eval_indices"]
