"""The model side of a node, on one process or on the N ranks of a ``torchrun`` job, assembled from
one component per concern:

- :class:`~peers.node.layout.ShardLayout` — which rows of each parameter this rank holds (FSDP2);
- :class:`~peers.node.training.Training` — inner steps, error feedback and compression (peers only);
- :class:`~peers.node.updates.Updates` — decoding, aggregation and the outer step;
- :class:`~peers.node.measure.Measurements` — losses, loss tests, fingerprints, weight samples;
- :class:`~peers.node.state.StateIO` — local state and whole weights for checkpoints and exports;
- :class:`~peers.node.ranks.Ranks` — how rank 0 runs each collective operation on every rank.

``peer.py`` and ``validator.py`` call these components the same way on 1 rank or N; only the
components know the difference.
"""

from __future__ import annotations

import torch

from gauntlet.config import GauntletConfig
from gauntlet.parallel.world import World
from peers.node.layout import ShardLayout
from peers.node.measure import Measurements
from peers.node.ranks import Ranks
from peers.node.state import StateIO
from peers.node.training import Training
from peers.node.updates import Updates


class ModelEngine:
    def __init__(self, cfg: GauntletConfig, model: torch.nn.Module, world: World | None = None,
                 train: bool = True) -> None:
        self.model, self.world = model, world or World()
        self.spec = {n: tuple(p.shape) for n, p in model.named_parameters()}  # whole shapes, before sharding
        self.ranks = Ranks(self.world)
        self.layout = ShardLayout(model, self.world, self.spec)
        self.training = Training(cfg, model, self.layout, self.ranks) if train else None
        self.updates = Updates(cfg, self.layout, self.ranks)
        self.measure = Measurements(cfg, model, self.layout, self.ranks, self.updates, self.training)
        self.state = StateIO(cfg, model, self.layout, self.ranks, self.training)

    @property
    def sharded(self) -> bool:
        return self.world.distributed

    def serve(self) -> None:
        """Ranks other than 0: run the operations rank 0 calls until it says stop."""
        parts = (self.training, self.updates, self.measure, self.state)
        self.ranks.serve({p.NAME: p for p in parts if p is not None})

    def stop(self) -> None:
        """Rank 0: release the other ranks."""
        self.ranks.stop()
