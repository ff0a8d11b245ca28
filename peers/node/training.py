"""Training on a peer: the inner optimiser it runs between outer steps (AdamW with linear warm-up,
cosine decay and gradient clipping, counted in inner steps across windows; docs/protocol.md §2.2),
and the engine component that turns a window's inner steps into a compressed Δ."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from gauntlet.config import GauntletConfig, InnerConfig
from gauntlet.errors import ConfigError
from gauntlet.models import autocast
from gauntlet.sparseloco import ErrorFeedback
from gauntlet.sparseloco.compress import CompressedTensor
from gauntlet.sparseloco.sharding import ShardedErrorFeedback
from peers.node.layout import ShardLayout
from peers.node.ranks import Ranks, collective


def lr_at(step: int, cfg: InnerConfig) -> float:
    """Learning rate of inner step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / cfg.decay_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class InnerTrainer:
    def __init__(self, model: torch.nn.Module, cfg: InnerConfig, bf16: bool = True) -> None:
        self.model, self.cfg, self.bf16 = model, cfg, bf16
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.step = 0

    def train(self, batches: Iterable[torch.Tensor]) -> float:
        """One optimiser step per batch; returns the mean training loss."""
        device = self.params[0].device
        self.model.train()
        losses = []
        for batch in batches:
            for group in self.optimizer.param_groups:
                group["lr"] = lr_at(self.step, self.cfg)
            batch = batch.to(device)
            with autocast(device, self.bf16):
                loss = self.model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            losses.append(float(loss.detach()))
        return sum(losses) / max(len(losses), 1)


class Training:
    """A peer's side of the engine: inner steps from the current weights, and error feedback with
    compression of the Δ they produced (this rank's rows of it when sharded)."""

    NAME = "training"

    def __init__(self, cfg: GauntletConfig, model: torch.nn.Module, layout: ShardLayout, ranks: Ranks) -> None:
        self.cfg, self.layout, self.ranks = cfg, layout, ranks
        self.trainer = InnerTrainer(model, cfg.inner, cfg.model.autocast_bf16)
        spec = layout.spec
        self.error_feedback = (ShardedErrorFeedback(spec, cfg.sparseloco, layout.comm, layout.device)
                               if layout.sharded else ErrorFeedback(spec, cfg.sparseloco, layout.device))
        self.delta: dict[str, torch.Tensor] | None = None  # the last trained Δ (this rank's rows)

    @collective()
    def train(self, batches: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        """Inner steps from the current weights, one per batch (batch × seq); returns this
        rank's rows of Δ = θ₀ − θ (also kept for :meth:`compress`) and the mean training loss; the
        weights are reset to θ₀."""
        local = self.layout.local
        anchor = {n: t.detach().clone() for n, t in local.items()}
        loss = self.trainer.train(self.layout.my_part(batches))
        with torch.no_grad():
            self.delta = {n: anchor[n] - t.detach() for n, t in local.items()}
            for n, t in local.items():
                t.copy_(anchor[n])
        return self.delta, self.layout.mean_over_ranks(loss)

    @collective()
    def compress(self, delta: Mapping[str, torch.Tensor] | None = None) -> dict[str, CompressedTensor] | None:
        """Error feedback and compression of Δ (default: the last trained one). Rank 0 gets the
        message's tensors (None elsewhere)."""
        if delta is not None and self.layout.sharded:
            raise ConfigError("a sharded peer compresses the Δ its ranks trained; behaviours that change Δ run "
                              "on one process only")
        out = self.error_feedback.compress(self.delta if delta is None else delta)
        return out if self.layout.world.main else None

    def residuals(self) -> dict[str, torch.Tensor]:
        """The error-feedback residuals in the parameters' layout (this rank's rows when sharded)."""
        ef = self.error_feedback
        return ef.buffers if self.layout.sharded else {n: ef.residual(n) for n in ef.buffers}
