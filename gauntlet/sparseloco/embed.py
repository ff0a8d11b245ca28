"""SparseLoCo for any synchronous PyTorch trainer.

Wrap a model and its inner optimiser; every ``inner_steps`` optimiser steps the wrapper computes the
pseudo-gradient Δ = θ₀ − θ, compresses it with error feedback, exchanges the encoded messages
through a transport, aggregates them (median clipping, ``mean`` or ``scatter_mean``) and applies
the outer step from θ₀. Every rank ends the outer step with bit-identical weights. ::

    model = build_model()
    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    outer = SparseLoCo(model, inner, TorchDistributedTransport(), inner_steps=30)
    for batch in loader:
        model(**batch).loss.backward()
        inner.step()            # the wrapper's hook counts steps and syncs every 30
        inner.zero_grad()

The inner optimiser's state is kept across outer steps. :class:`DiLoCo` has the same interface and
exchanges the dense fp32 Δ instead (the baseline). ``state_dict()`` holds what a restart needs.

**Sharded models.** Give :class:`SparseLoCo` a 2-D ``DeviceMesh`` with dimensions
``("replicate", "shard")`` instead of a transport, after ``fully_shard(model, mesh=mesh["shard"])``
(HSDP style: each replica is a group of ``shard`` ranks, and replicas exchange nothing but the outer
step). Each rank compresses the tile-rows it owns and sends only that part of its replica's message
to its counterparts in the other replicas (:mod:`gauntlet.parallel.hsdp`); every replica ends the
outer step bit-identical. With a mesh, ``state_dict()`` holds this rank's shards (save it with
``torch.distributed.checkpoint``). ``examples/embed_fsdp.py`` is a runnable example.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import safetensors.torch
import torch

from gauntlet.config import DiLoCoConfig, SparseLoCoConfig
from gauntlet.errors import ConfigError, TransportError
from gauntlet.sparseloco.aggregate import aggregate, outer_step
from gauntlet.sparseloco.diloco import DiLoCoOuter, mean_delta
from gauntlet.sparseloco.feedback import ErrorFeedback
from gauntlet.sparseloco.transport import Transport
from gauntlet.sparseloco.wire import Signer, decode_message, encode_message


@dataclass(frozen=True)
class SyncReport:
    """What one outer step did."""

    outer_step: int
    peers: int
    bytes_sent: int
    bytes_received: int
    seconds: float


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class _OuterLoop:
    """Shared mechanics: parameter anchor θ₀, step counting, the optimiser hook, state."""

    def __init__(self, params: dict[str, torch.Tensor], inner_optimizer: torch.optim.Optimizer,
                 transport: Transport | None, inner_steps: int, hook: bool) -> None:
        if inner_steps < 1:
            raise ValueError("inner_steps must be at least 1")
        self.params = params  # the tensors the outer step writes: whole parameters, or this rank's shards
        self.anchor = {n: p.detach().clone() for n, p in self.params.items()}
        self.transport = transport
        self.inner_steps = inner_steps
        self.inner_step = 0
        self.outer_steps = 0
        self.last_report: SyncReport | None = None
        self._hook = inner_optimizer.register_step_post_hook(lambda *_: self.step()) if hook else None

    def step(self) -> SyncReport | None:
        """Count one inner step; run the outer step when ``inner_steps`` have passed."""
        self.inner_step += 1
        if self.inner_step % self.inner_steps:
            return None
        return self.sync()

    @torch.no_grad()
    def sync(self) -> SyncReport:
        """Exchange and apply one outer step now."""
        t0 = time.perf_counter()
        delta = {n: self.anchor[n] - p.detach() for n, p in self.params.items()}
        sent, received = self._communicate_and_apply(delta)
        for n, p in self.params.items():
            self.anchor[n].copy_(p)
        self.last_report = SyncReport(self.outer_steps, self._peers(), sent, received, time.perf_counter() - t0)
        self.outer_steps += 1
        return self.last_report

    def _restore_anchor(self) -> None:
        for n, p in self.params.items():
            p.copy_(self.anchor[n])

    def _communicate_and_apply(self, delta: dict[str, torch.Tensor]) -> tuple[int, int]:
        raise NotImplementedError

    def _peers(self) -> int:
        """How many updates one outer step combines."""
        return self.transport.world_size

    def close(self) -> None:
        """Detach from the inner optimiser."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"anchor.{n}": t for n, t in self.anchor.items()}
        state["counters"] = torch.tensor([self.inner_step, self.outer_steps])
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for n, t in self.anchor.items():
            t.copy_(state[f"anchor.{n}"])
        self.inner_step, self.outer_steps = (int(v) for v in state["counters"])


class SparseLoCo(_OuterLoop):
    """SparseLoCo outer loop around a model and its inner optimiser (see module docstring).

    ``signer`` signs each message with a hotkey (verified by every receiver); without it messages
    are unsigned, which suits a trainer whose ranks already trust one another.
    """

    def __init__(self, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer,
                 transport: Transport | None = None, *, inner_steps: int = 30, config: SparseLoCoConfig | None = None,
                 run: str = "embedded", signer: Signer | None = None, hook: bool = True, mesh=None) -> None:
        if (transport is None) == (mesh is None):
            raise ConfigError("give SparseLoCo either a transport (unsharded model) or a 2-D mesh (sharded model)")
        self.spec = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        self.mesh, self.exchange = mesh, None
        params = trainable(model)
        if mesh is not None:
            # deferred: FSDP and DTensor support loads only for a sharded trainer
            from gauntlet.parallel.fsdp import check_sharding, local_tensors
            from gauntlet.parallel.hsdp import ReplicaExchange, check_mesh

            check_mesh(mesh)
            check_sharding(params, mesh["shard"].size(), mesh["shard"].get_local_rank(), mesh=mesh["shard"])
            params = local_tensors(params)  # this rank's shards (writes go to the parameters)
        super().__init__(params, inner_optimizer, transport, inner_steps, hook)
        self.config = config or SparseLoCoConfig()
        self.run = run
        self.signer = signer
        device = next(iter(self.params.values())).device
        if mesh is not None:
            self.exchange = ReplicaExchange(self.spec, self.config, mesh, device)
            self.error_feedback = self.exchange.error_feedback
        else:
            self.error_feedback = ErrorFeedback(self.spec, self.config, device)

    def _peers(self) -> int:
        return self.exchange.replicas if self.exchange is not None else self.transport.world_size

    def _communicate_and_apply(self, delta: dict[str, torch.Tensor]) -> tuple[int, int]:
        cfg = self.config
        if self.exchange is not None:
            agg, sent, received = self.exchange.step(delta, self.outer_steps)
            self._restore_anchor()
            outer_step(self.params, agg, cfg.outer_lr)
            return sent, received
        payload = encode_message(self.error_feedback.compress(delta), window=self.outer_steps, run=self.run,
                                 codec=cfg, signer=self.signer, hotkey=f"rank-{self.transport.rank}")
        payloads = self.transport.exchange(payload)
        device = next(iter(self.params.values())).device
        updates = []
        for data in payloads:
            msg = decode_message(data, spec=self.spec, expected_window=self.outer_steps, expected_run=self.run,
                                 expected_codec=cfg, require_signature=self.signer is not None)
            updates.append({n: ct.to(device) for n, ct in msg.tensors.items()})
        agg = aggregate(updates, cfg.combine, cfg.clip_to_median)
        self._restore_anchor()
        outer_step(self.params, agg, cfg.outer_lr)
        return len(payload), sum(len(p) for p in payloads)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), **self.error_feedback.state_dict()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.error_feedback.load_state_dict(state)


class DiLoCo(_OuterLoop):
    """The DiLoCo baseline with the same interface: dense fp32 Δ, Nesterov outer SGD."""

    def __init__(self, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer, transport: Transport, *,
                 inner_steps: int = 30, config: DiLoCoConfig | None = None, hook: bool = True) -> None:
        super().__init__(trainable(model), inner_optimizer, transport, inner_steps, hook)
        self.outer = DiLoCoOuter(self.params, config or DiLoCoConfig())

    def _communicate_and_apply(self, delta: dict[str, torch.Tensor]) -> tuple[int, int]:
        payload = safetensors.torch.save({n: d.float().cpu().contiguous() for n, d in delta.items()})
        payloads = self.transport.exchange(payload)
        try:
            deltas = [safetensors.torch.load(p) for p in payloads]
        except Exception as exc:  # safetensors raises its own error type
            raise TransportError(f"a rank sent an unreadable dense update: {exc}") from exc
        self._restore_anchor()
        self.outer.step(mean_delta(deltas))
        return len(payload), sum(len(p) for p in payloads)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), **self.outer.state_dict()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        self.outer.load_state_dict(state)
