"""Gauntlet scoring (docs/protocol.md §4): pure formulas for stage 1 (sync) and stage 2 (the loss test)."""

from gauntlet.scoring.formulas import (
    final_score,
    moving_average,
    relative_improvement,
    steps_behind,
    sync_score,
    uniqueness_indicator,
)
from gauntlet.scoring.measurements import LossTest, loss_test, sample_positions, weight_sample

__all__ = ["LossTest", "final_score", "loss_test", "moving_average", "relative_improvement", "steps_behind",
           "sync_score", "uniqueness_indicator", "sample_positions", "weight_sample"]
