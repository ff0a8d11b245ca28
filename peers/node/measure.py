"""What a node measures of its weights: mean losses, the loss test of one peer's update (stage 2 of
Gauntlet), fingerprints and weight samples — the same numbers on one process or any number of ranks."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from gauntlet.config import GauntletConfig
from gauntlet.models import mean_loss
from gauntlet.scoring import LossTest, sample_positions
from gauntlet.sparseloco.aggregate import aggregate_tensor, rescale_factor, value_norm
from gauntlet.sparseloco.fingerprint import compose, leaves, raw_bytes, row_digests
from gauntlet.sparseloco.wire import Message
from peers.node.layout import ShardLayout
from peers.node.ranks import Ranks, collective
from peers.node.training import Training
from peers.node.updates import Updates


class Measurements:
    NAME = "measure"

    def __init__(self, cfg: GauntletConfig, model: torch.nn.Module, layout: ShardLayout, ranks: Ranks,
                 updates: Updates, training: Training | None) -> None:
        self.cfg, self.model, self.layout, self.ranks = cfg, model, layout, ranks
        self.updates, self.training = updates, training  # decoding; the residuals (peers)

    @collective()
    def mean_loss(self, batches: list[torch.Tensor]) -> float:
        """Mean loss over ``batches`` (every rank runs all of them: FSDP's forward is collective)."""
        return mean_loss(self.model, list(batches), self.cfg.model.autocast_bf16)

    def test_update(self, message: Message, scale: float, own: list[torch.Tensor], random: list[torch.Tensor],
                    random_before: float, norm_to: Mapping[str, float] | None = None) -> LossTest:
        """:meth:`loss_test` of one gathered message."""
        return self.loss_test(message.raw if self.layout.sharded else message, scale, own, random, random_before,
                              None if norm_to is None else dict(norm_to))

    @collective()
    def loss_test(self, data, scale: float, own: list[torch.Tensor], random: list[torch.Tensor],
                  random_before: float, norm_to: dict[str, float] | None = None) -> LossTest:
        """Stage 2 for one peer's message: loss before and after its update alone (scaled), restoring
        the weights bit for bit (see :func:`gauntlet.scoring.measurements.loss_test`). With ``norm_to``
        (tensor → the window's median norm) each tensor is first rescaled to that norm: the size the
        aggregate clips bigger updates to, so that multiplying an update changes nothing measured."""
        (update,) = self.updates.decode([data])
        local, rows = self.layout.local, self.layout.my_rows
        bf16 = self.cfg.model.autocast_bf16
        own_before = mean_loss(self.model, list(own), bf16)
        backup = {n: t.detach().clone() for n, t in local.items()}
        try:
            with torch.no_grad():
                for name, ct in update.items():
                    u = aggregate_tensor([ct], "mean", False, None if rows is None else rows[name])
                    if norm_to is not None and name in norm_to:
                        u = u * rescale_factor(value_norm(ct), norm_to[name])
                    local[name].sub_(u.to(local[name].dtype) * scale)
            own_after = mean_loss(self.model, list(own), bf16)
            random_after = mean_loss(self.model, list(random), bf16)
        finally:
            with torch.no_grad():
                for n, t in backup.items():
                    local[n].copy_(t)
        return LossTest(own_before, own_after, random_before, random_after)

    @collective()
    def fingerprint(self) -> str | None:
        """The weights' fingerprint (rank 0; None elsewhere), the same for any number of ranks."""
        return self._fingerprint({n: t.detach() for n, t in self.layout.local.items()})

    @collective()
    def ef_checksum(self) -> str | None:
        """The error-feedback residuals' fingerprint, in the parameters' layout (any number of ranks)."""
        return self._fingerprint(self.training.residuals())

    def _fingerprint(self, local: Mapping[str, torch.Tensor]) -> str | None:
        lay = self.layout
        if not lay.sharded:
            return compose((n, t.dtype, tuple(t.shape), leaves(t)) for n, t in local.items())
        entries = []
        for name, shape in sorted(lay.spec.items()):
            t = local[name]
            parts = lay.gather_bytes(row_digests(t) if len(shape) >= 2 else raw_bytes(t))
            if parts is not None:  # rows: their digests; a small 1-D tensor: its bytes, hashed here
                joined = b"".join(parts)
                entries.append((name, t.dtype, shape, joined if len(shape) >= 2 else hashlib.sha256(joined).digest()))
        return compose(entries) if lay.world.main else None

    @collective()
    def weight_sample(self, count: int, seed: int) -> list[float] | None:
        """:func:`gauntlet.scoring.weight_sample` of the whole weights, from every rank's rows."""
        lay = self.layout
        positions = sample_positions(lay.spec, count, seed)
        if not lay.sharded:
            flat = {n: t.detach().reshape(-1) for n, t in lay.local.items()}
            return [float(flat[n][i]) for n, i in positions]
        values = torch.zeros(len(positions), dtype=torch.float64)
        for k, (name, i) in enumerate(positions):
            t = lay.local[name]
            per_row = t.numel() // max(t.shape[0], 1) if t.dim() else 1
            lo = lay.rows[name][0] * per_row
            if lo <= i < lo + t.numel():
                values[k] = float(t.detach().reshape(-1)[i - lo])
        lay.sum_over_ranks(values)  # one rank holds each position: an exact sum
        return [float(v) for v in values] if lay.world.main else None
