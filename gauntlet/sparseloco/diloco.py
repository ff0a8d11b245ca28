"""The DiLoCo baseline: all peers exchange the dense fp32 pseudo-gradient, average it, and apply
outer SGD with Nesterov momentum (lr 0.7, momentum 0.9). Used by the benchmarks to compare bytes
and loss against SparseLoCo."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gauntlet.config import DiLoCoConfig


def mean_delta(deltas: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the peers' dense pseudo-gradients."""
    return {n: torch.stack([d[n] for d in deltas]).float().mean(dim=0) for n in deltas[0]}


class DiLoCoOuter:
    """Outer Nesterov-SGD over a model's parameters, fed with the averaged Δ as the gradient."""

    def __init__(self, params: Mapping[str, torch.nn.Parameter], cfg: DiLoCoConfig | None = None) -> None:
        cfg = cfg or DiLoCoConfig()
        self.params = dict(params)
        self.opt = torch.optim.SGD(
            list(self.params.values()), lr=cfg.outer_lr, momentum=cfg.momentum, nesterov=cfg.nesterov
        )

    @torch.no_grad()
    def step(self, avg_delta: Mapping[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.grad = avg_delta[name].to(device=p.device, dtype=p.dtype)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Momentum buffers (absent before the first step)."""
        out = {}
        for name, p in self.params.items():
            buf = self.opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"momentum.{name}"] = buf
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            buf = state.get(f"momentum.{name}")
            if buf is not None:
                self.opt.state[p]["momentum_buffer"] = buf.clone().to(device=p.device, dtype=p.dtype)
