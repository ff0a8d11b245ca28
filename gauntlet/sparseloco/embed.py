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
exchanges the dense fp32 Δ instead (the baseline). ``state_dict()`` holds what a restart needs; with a
transport, each rank's residuals are its own: save each rank's dict to its own file (for instance
``safetensors.torch.save_file(outer.state_dict(), f"outer-{rank}.safetensors")``).

**Sharded models.** Give the wrapper a ``DeviceMesh`` instead of a transport, after
``fully_shard(model, mesh=mesh["shard"])`` (HSDP style: each replica is a group of ``shard`` ranks,
and replicas exchange nothing but the outer step). The mesh may have more dimensions; name the two
that matter with ``mesh_dims=(replica_dim, shard_dim)`` (default ``("replicate", "shard")``). Each
rank compresses the tile-rows it owns and sends only that part of its replica's message to its
counterparts in the other replicas (:mod:`gauntlet.parallel.hsdp`); every replica ends the outer
step bit-identical. :class:`DiLoCo` takes the same ``mesh=`` (each rank averages its rows of the dense
Δ with the same rows of the other replicas). With a mesh, ``state_dict()`` returns DTensors that
``torch.distributed.checkpoint`` saves and loads onto any number of shard ranks; its values are the
wrapper's own tensors, so a dict taken once stays current. ``examples/embed_fsdp.py`` is a runnable
example.
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
from gauntlet.sparseloco.transport import TorchDistributedTransport, Transport
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


def _sharded(model: torch.nn.Module, mesh, mesh_dims: tuple[str, str]):
    """(the model's DTensor parameters, their local shards, the ReplicaMesh), checked: every trainable
    parameter sharded by ``fully_shard`` on dim 0 over the mesh's shard dimension."""
    # deferred: FSDP and DTensor support loads only for a sharded trainer
    from gauntlet.parallel.fsdp import check_sharding, local_tensors
    from gauntlet.parallel.hsdp import ReplicaMesh

    replica_mesh = ReplicaMesh.of(mesh, mesh_dims)
    params, shard = trainable(model), replica_mesh.shard_mesh
    check_sharding(params, shard.size(), shard.get_local_rank(), mesh=shard)
    return params, local_tensors(params), replica_mesh


class _OuterLoop:
    """Shared mechanics: parameter anchor θ₀, step counting, the optimiser hook, state."""

    def __init__(self, params: dict[str, torch.Tensor], inner_optimizer: torch.optim.Optimizer,
                 transport: Transport | None, inner_steps: int, hook: bool, sharded=None) -> None:
        if inner_steps < 1:
            raise ValueError("inner_steps must be at least 1")
        self.sharded = sharded  # with a mesh: the DTensor parameters (their placements shape the state)
        self.params = params  # the tensors the outer step writes: whole parameters, or this rank's shards
        self.anchor = {n: p.detach().clone() for n, p in self.params.items()}
        self.transport = transport
        self.inner_steps = inner_steps
        self.counters = torch.zeros(2, dtype=torch.int64)  # inner steps, outer steps: live in state_dict()
        self.last_report: SyncReport | None = None
        self._hook = inner_optimizer.register_step_post_hook(lambda *_: self.step()) if hook else None

    @property
    def inner_step(self) -> int:
        return int(self.counters[0])

    @inner_step.setter
    def inner_step(self, value: int) -> None:
        self.counters[0] = value

    @property
    def outer_steps(self) -> int:
        return int(self.counters[1])

    @outer_steps.setter
    def outer_steps(self, value: int) -> None:
        self.counters[1] = value

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

    def _like_params(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``tensors`` (one per parameter) under ``prefix``; with a mesh, as DTensors placed like the
        parameters (the same on every replica)."""
        if self.sharded is not None:
            from gauntlet.parallel.checkpoint import placed_like  # deferred: DTensor, for sharded trainers only

            tensors = placed_like(tensors, self.sharded)
        return {prefix + n: t for n, t in tensors.items()}

    def _copy_from(self, state: Mapping[str, torch.Tensor], key: str, target: torch.Tensor) -> None:
        src = state[key]
        if self.sharded is not None:  # a DTensor of this rank's rows (or its local tensor)
            from gauntlet.parallel.checkpoint import local_part  # deferred: DTensor, for sharded trainers only

            src = local_part(src, target, key)
        target.copy_(src)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = self._like_params("anchor.", self.anchor)
        state["counters"] = self.counters
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for n, t in self.anchor.items():
            self._copy_from(state, f"anchor.{n}", t)
        self.counters.copy_(torch.as_tensor(state["counters"]))


class SparseLoCo(_OuterLoop):
    """SparseLoCo outer loop around a model and its inner optimiser (see module docstring).

    ``signer`` signs each message with a hotkey (verified by every receiver); without it messages
    are unsigned, which suits a trainer whose ranks already trust one another.
    """

    def __init__(self, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer,
                 transport: Transport | None = None, *, inner_steps: int = 30, config: SparseLoCoConfig | None = None,
                 run: str = "embedded", signer: Signer | None = None, hook: bool = True, mesh=None,
                 mesh_dims: tuple[str, str] = ("replicate", "shard")) -> None:
        if (transport is None) == (mesh is None):
            raise ConfigError("give SparseLoCo either a transport (unsharded model) or a mesh (sharded model)")
        self.spec = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        self.mesh, self.exchange, sharded, params = mesh, None, None, trainable(model)
        if mesh is not None:
            sharded, params, self.replica_mesh = _sharded(model, mesh, mesh_dims)
        super().__init__(params, inner_optimizer, transport, inner_steps, hook, sharded)
        self.config = config or SparseLoCoConfig()
        self.run = run
        self.signer = signer
        device = next(iter(self.params.values())).device
        if mesh is not None:
            from gauntlet.parallel.hsdp import ReplicaExchange  # deferred: for sharded trainers only

            self.exchange = ReplicaExchange(self.spec, self.config, self.replica_mesh, device)
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
        """θ₀ (``anchor.*``), the error-feedback residuals (``ef.*``) and the step counters. With a
        mesh, DTensors: θ₀ placed like the parameters, the residuals — which differ between replicas —
        as ``(replicas, *shape)`` tensors sharded over both dimensions, so that
        ``torch.distributed.checkpoint`` saves every replica's and re-shards them on load."""
        ef = self.error_feedback.buffers
        if self.sharded is None:
            return {**super().state_dict(), **self.error_feedback.state_dict()}
        from gauntlet.parallel.checkpoint import per_replica  # deferred: DTensor, for sharded trainers only

        rm = self.replica_mesh
        residuals = per_replica(ef, self.spec, rm.pair, rm.replicate)
        return {**super().state_dict(), **{f"ef.{n}": t for n, t in residuals.items()}}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        if self.sharded is None:
            self.error_feedback.load_state_dict(state)
            return
        for n, buf in self.error_feedback.buffers.items():
            self._copy_from(state, f"ef.{n}", buf)


class DiLoCo(_OuterLoop):
    """The DiLoCo baseline with the same interface: dense fp32 Δ, Nesterov outer SGD."""

    def __init__(self, model: torch.nn.Module, inner_optimizer: torch.optim.Optimizer,
                 transport: Transport | None = None, *, inner_steps: int = 30, config: DiLoCoConfig | None = None,
                 hook: bool = True, mesh=None, mesh_dims: tuple[str, str] = ("replicate", "shard")) -> None:
        if (transport is None) == (mesh is None):
            raise ConfigError("give DiLoCo either a transport (unsharded model) or a mesh (sharded model)")
        sharded, params = None, trainable(model)
        if mesh is not None:  # each rank exchanges its rows of Δ with the same rows of the other replicas
            sharded, params, self.replica_mesh = _sharded(model, mesh, mesh_dims)
            transport = TorchDistributedTransport(mesh.get_group(self.replica_mesh.replicate))
        super().__init__(params, inner_optimizer, transport, inner_steps, hook, sharded)
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
        """θ₀, the counters and the outer momentum (``momentum.*``; DTensors placed like the
        parameters with a mesh)."""
        return {**super().state_dict(), **self._like_params("momentum.", self.outer.momentum)}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        for n, buf in self.outer.momentum.items():
            self._copy_from(state, f"momentum.{n}", buf)
