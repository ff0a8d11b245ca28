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
        # the momentum buffers exist from the start (zeros: SGD's first step gives the same result as
        # with none), so that a state dict has the same keys before and after the first outer step
        self.momentum = {n: torch.zeros_like(p, memory_format=torch.contiguous_format) for n, p in self.params.items()}
        for n, p in self.params.items():
            self.opt.state[p]["momentum_buffer"] = self.momentum[n]

    @torch.no_grad()
    def step(self, avg_delta: Mapping[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            p.grad = avg_delta[name].to(device=p.device, dtype=p.dtype)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The momentum buffers (``momentum.<name>``)."""
        return {f"momentum.{n}": buf for n, buf in self.momentum.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, buf in self.momentum.items():
            buf.copy_(state[f"momentum.{name}"])
