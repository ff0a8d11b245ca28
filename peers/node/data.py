"""The training data as a node sees it: the run's train and validation sets, the sequences assigned to
a hotkey in a window, and batches every node draws alike."""

from __future__ import annotations

from pathlib import Path

import torch

from gauntlet.config import GauntletConfig
from gauntlet.data import open_dataset
from gauntlet.uniqueness import assigned_indices


def default_data_dir() -> Path:
    return Path.home() / ".cache" / "gauntlet" / "data"


class NodeData:
    def __init__(self, cfg: GauntletConfig, data_dir: Path) -> None:
        self.seed, self.batch_size = cfg.seed, cfg.train.batch_size
        self.samples_per_window = cfg.samples_per_window
        self.train_set, self.val_set = open_dataset(cfg.data, data_dir)

    def batches(self, indices: list[int]) -> list[torch.Tensor]:
        return list(self.train_set.batch(indices).split(self.batch_size))

    def assigned(self, window: int, hotkey: str) -> list[int]:
        return assigned_indices(self.seed, hotkey, window, self.samples_per_window, len(self.train_set))

    def random_batches(self, window: int, n: int, salt: str = "shared-random") -> list[torch.Tensor]:
        """Batches drawn alike by every node that knows ``salt`` (not assigned to anyone)."""
        idx = assigned_indices(self.seed, salt, window, n * self.batch_size, len(self.train_set))
        return self.batches(idx)

    def validation_batches(self, batches: int) -> list[torch.Tensor]:
        """The first ``batches`` batches of the validation set (fewer if it is smaller)."""
        n = min(len(self.val_set), batches * self.batch_size)
        return list(self.val_set.batch(list(range(n))).split(self.batch_size))
