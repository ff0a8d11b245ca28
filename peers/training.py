"""The inner optimiser a peer runs between outer steps (PROTOCOL §2.2): AdamW with linear warm-up,
cosine decay and gradient clipping, counted in inner steps across windows."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from gauntlet.config import InnerConfig
from gauntlet.models import autocast


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
