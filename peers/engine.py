"""The model side of a node — weights, inner training, error feedback, decoding and the outer step,
losses, fingerprints, weight samples and local state — on one process, or on the N ranks of a
``torchrun`` job.

Under ``torchrun`` every rank builds the same model and shards it with FSDP2
(:mod:`gauntlet.parallel.fsdp`). Rank 0 runs the node itself (chain, storage, every decision); the
other ranks run :meth:`ModelEngine.serve` and execute the engine operations rank 0 calls: an
operation marked :func:`collective` is sent to them (its name and arguments, JSON and raw tensor
bytes) before rank 0 runs it, and then every rank runs the same code on its shards. So ``peer.py``
and ``validator.py`` read the same on 1 rank or N; only this class knows the difference.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from gauntlet.config import GauntletConfig
from gauntlet.errors import ConfigError
from gauntlet.models import mean_loss
from gauntlet.parallel.world import World, broadcast_bytes, decode_call, encode_call
from gauntlet.scoring import LossTest, sample_positions
from gauntlet.sparseloco import ErrorFeedback, decode_message, outer_step
from gauntlet.sparseloco.aggregate import aggregate_stream, aggregate_tensor
from gauntlet.sparseloco.compress import CompressedTensor
from gauntlet.sparseloco.fingerprint import compose, leaves, raw_bytes, row_digests
from gauntlet.sparseloco.sharding import ShardedErrorFeedback, shard_rows
from gauntlet.sparseloco.wire import Message
from peers.training import InnerTrainer

log = logging.getLogger("gauntlet.engine")
HEARTBEAT_S = 10.0  # an idle rank 0 tells the others it is alive this often


def collective(private: int = 0):
    """Mark an engine operation that every rank runs. Rank 0's call is sent to the other ranks first;
    the last ``private`` arguments stay on rank 0 (the others get None for them)."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(self, *args):
            if self.world.distributed and self.world.main:
                shared = list(args[:len(args) - private]) + [None] * private if private else list(args)
                broadcast_bytes(self.world, encode_call(fn.__name__, shared))
            return fn(self, *args)
        call.collective = True
        return call
    return wrap


class ModelEngine:
    def __init__(self, cfg: GauntletConfig, model: torch.nn.Module, world: World | None = None,
                 train: bool = True) -> None:
        self.cfg, self.model, self.world = cfg, model, world or World()
        self.spec = {n: tuple(p.shape) for n, p in model.named_parameters()}
        w = self.world
        if w.distributed:
            from gauntlet.parallel.comm import TorchShardComm
            from gauntlet.parallel.fsdp import check_sharding, shard_model

            shard_model(model, w.mesh)
            check_sharding(dict(model.named_parameters()), w.size, w.rank)
            self.comm = TorchShardComm(device=w.device)
        self.params = dict(model.named_parameters())
        from gauntlet.parallel.fsdp import local_tensors

        self.local = local_tensors(self.params) if w.distributed else dict(self.params)
        self.rows = {n: shard_rows(s[0] if s else 1, w.size, w.rank) for n, s in self.spec.items()}
        self.device = next(iter(self.local.values())).device
        self.trainer = InnerTrainer(model, cfg.inner, cfg.model.autocast_bf16) if train else None
        self.error_feedback = None
        if train:
            self.error_feedback = (ShardedErrorFeedback(self.spec, cfg.sparseloco, self.comm, self.device)
                                   if w.distributed else ErrorFeedback(self.spec, cfg.sparseloco, self.device))
        self.delta: dict[str, torch.Tensor] | None = None
        self._last_beat = time.monotonic()

    @property
    def sharded(self) -> bool:
        return self.world.distributed

    # ------------------------------------------------------------------------- the other ranks

    def serve(self) -> None:
        """Ranks other than 0: run what rank 0 calls until it says stop."""
        while True:
            op, args = decode_call(broadcast_bytes(self.world, None))
            if op == "stop":
                return
            method = getattr(type(self), op, None)
            if method is None or not getattr(method, "collective", False):
                raise ConfigError(f"rank 0 asked for an unknown operation {op!r}: are all ranks on one version?")
            method.__wrapped__(self, *args)

    def stop(self) -> None:
        """Rank 0: release the other ranks (they return from :meth:`serve`)."""
        if self.world.distributed and self.world.main:
            broadcast_bytes(self.world, encode_call("stop", []))

    def idle(self) -> None:
        """Called while rank 0 waits: keeps the other ranks' collective waits under their timeout."""
        if self.world.distributed and time.monotonic() - self._last_beat >= HEARTBEAT_S:
            self._last_beat = time.monotonic()
            self.heartbeat()

    @collective()
    def heartbeat(self) -> None:
        return None

    # ---------------------------------------------------------------------------- training

    def _my_part(self, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's micro-batches: an equal share of every batch's sequences."""
        out = []
        for batch in batches:
            size = batch.shape[0]
            if size % self.world.size:
                raise ConfigError(f"a batch of {size} sequences does not split over {self.world.size} ranks: make "
                                  f"train.batch_size a multiple of the number of ranks")
            per = size // self.world.size
            out.append(batch[self.world.rank * per:(self.world.rank + 1) * per])
        return out

    @collective()
    def train(self, batches: list[torch.Tensor]) -> tuple[dict[str, torch.Tensor], float]:
        """Inner steps from the current weights, one per batch (batch × seq); returns this
        rank's rows of Δ = θ₀ − θ (also kept for :meth:`compress`) and the mean training loss; the
        weights are reset to θ₀."""
        anchor = {n: t.detach().clone() for n, t in self.local.items()}
        loss = self.trainer.train(self._my_part(batches))
        with torch.no_grad():
            self.delta = {n: anchor[n] - t.detach() for n, t in self.local.items()}
            for n, t in self.local.items():
                t.copy_(anchor[n])
        return self.delta, self._mean_over_ranks(loss)

    def _mean_over_ranks(self, value: float) -> float:
        if not self.sharded:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=self.world.control)
        return float(t.item()) / self.world.size

    @collective()
    def compress(self, delta: Mapping[str, torch.Tensor] | None = None) -> dict[str, CompressedTensor] | None:
        """Error feedback and compression of Δ (default: the last trained one). Rank 0 gets the
        message's tensors (None elsewhere)."""
        if delta is not None and self.sharded:
            raise ConfigError("a sharded peer compresses the Δ its ranks trained; behaviours that change Δ run "
                              "on one process only")
        out = self.error_feedback.compress(self.delta if delta is None else delta)
        return out if self.world.main else None

    # ----------------------------------------------------------------------- applying updates

    def apply(self, messages: Sequence[Message], want_full: bool = False) -> dict[str, torch.Tensor] | None:
        """Aggregate gathered, validated messages (in canonical order) and apply the outer step.
        Returns the aggregate on one process, or with ``want_full`` the whole one on rank 0."""
        return self.apply_messages([m.raw if self.sharded else m for m in messages], want_full)

    def test_update(self, message: Message, scale: float, own: list[torch.Tensor], random: list[torch.Tensor],
                    random_before: float) -> LossTest:
        """:meth:`loss_test` of one gathered message."""
        return self.loss_test(message.raw if self.sharded else message, scale, own, random, random_before)

    def _decode(self, items: Sequence) -> list[dict[str, CompressedTensor]]:
        """Decoded tensors of messages (:class:`Message`, spooled messages or bytes); bytes are messages
        rank 0 has already validated (signature included) when it gathered them, and are checked again
        for structure, not signature."""
        codec, out = self.cfg.sparseloco, []
        for item in items:
            if not isinstance(item, (bytes, bytearray, memoryview)):  # a Message, or a SpooledMessage
                tensors = item.tensors
            else:
                tensors = decode_message(bytes(item), spec=self.spec, expected_codec=codec, require_signature=False,
                                         verify=lambda *_: True).tensors
            out.append({n: ct.to(self.device) for n, ct in tensors.items()})
        return out

    @collective()
    def apply_messages(self, datas: list, want_full: bool = False) -> dict[str, torch.Tensor] | None:
        """Aggregate the messages (canonical order: as given) into this rank's rows, apply the outer
        step. With ``want_full``, rank 0 returns the whole aggregate (to publish it)."""
        c = self.cfg.sparseloco
        agg = aggregate_stream(lambda i: self._decode([datas[i]])[0], len(datas), c.combine, c.clip_to_median,
                               rows=self.rows if self.sharded else None)  # one peer decoded at a time
        outer_step(self.local, agg, c.outer_lr)
        return self._gather_full(agg) if want_full else (agg if self.world.main and not self.sharded else None)

    @collective(private=1)
    def apply_full(self, agg: Mapping[str, torch.Tensor] | None) -> None:
        """The outer step with a whole aggregate that rank 0 holds (a validator's published one)."""
        outer_step(self.local, self._scatter_full(agg), self.cfg.sparseloco.outer_lr)

    @collective(private=1)
    def load_full(self, tensors: Mapping[str, torch.Tensor] | None) -> None:
        """Set the weights from whole tensors rank 0 holds (a validator's checkpoint)."""
        with torch.no_grad():
            for n, rows in self._scatter_full(tensors).items():
                self.local[n].copy_(rows.to(self.local[n].dtype))

    def _sizes(self, name: str) -> list[int]:
        """Elements of ``name`` each rank holds."""
        shape = self.spec[name]
        per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
        return [(y - x) * per_row for x, y in
                (shard_rows(shape[0] if shape else 1, self.world.size, r) for r in range(self.world.size))]

    def _scatter_full(self, full: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Each rank's rows of whole tensors that rank 0 holds."""
        if not self.sharded:
            return dict(full)
        out = {}
        for name in self.spec:
            sizes = self._sizes(name)
            if self.world.main:
                src = full[name].to(self.device, torch.float32).reshape(-1)
                send = list(src.split(sizes))
            else:
                send = [torch.zeros(0, device=self.device) for _ in sizes]
            got = self.comm.all_to_all(send, [sizes[self.world.rank] if r == 0 else 0 for r in range(len(sizes))])
            out[name] = got[0].view(self.local[name].shape)
        return out

    def _gather_full(self, local: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Whole tensors on rank 0 from every rank's rows (None elsewhere)."""
        if not self.sharded:
            return dict(local)
        out = {}
        for name, shape in self.spec.items():
            parts = self.comm.gather(local[name].reshape(-1).float().contiguous(), self._sizes(name))
            if parts is not None:
                out[name] = torch.cat(parts).reshape(shape).cpu()
        return out if self.world.main else None

    @collective()
    def full_state(self) -> dict[str, torch.Tensor] | None:
        """Every whole parameter on rank 0 (checkpoints, exports); None elsewhere."""
        return self._gather_full({n: t.detach() for n, t in self.local.items()})

    def whole_model(self, vocab_size: int) -> torch.nn.Module:
        """The model with whole weights (rank 0): the model itself on one process, else an unsharded
        copy on the CPU (for a Hugging Face export)."""
        if not self.sharded:
            return self.model
        from gauntlet.models import build_model

        state = self.full_state()
        copy = build_model(self.cfg.model.model_copy(update={"device": "cpu"}), vocab_size, self.cfg.data.seq_len,
                           seed=self.cfg.seed)
        with torch.no_grad():
            for name, p in copy.named_parameters():
                p.copy_(state[name])
        return copy

    # -------------------------------------------------------------------------- measurements

    @collective()
    def mean_loss(self, batches: list[torch.Tensor]) -> float:
        """Mean loss over ``batches`` (every rank runs all of them: FSDP's forward is collective)."""
        return mean_loss(self.model, list(batches), self.cfg.model.autocast_bf16)

    @collective()
    def loss_test(self, data, scale: float, own: list[torch.Tensor], random: list[torch.Tensor],
                  random_before: float) -> LossTest:
        """Stage 2 for one peer's message: loss before and after its update alone (scaled), restoring
        the weights bit for bit (see :func:`gauntlet.scoring.loss_test`)."""
        (update,) = self._decode([data])
        rows = self.rows if self.sharded else None
        bf16 = self.cfg.model.autocast_bf16
        own_before = mean_loss(self.model, list(own), bf16)
        backup = {n: t.detach().clone() for n, t in self.local.items()}
        try:
            with torch.no_grad():
                for name, ct in update.items():
                    u = aggregate_tensor([ct], "mean", False, None if rows is None else rows[name])
                    self.local[name].sub_(u.to(self.local[name].dtype) * scale)
            own_after = mean_loss(self.model, list(own), bf16)
            random_after = mean_loss(self.model, list(random), bf16)
        finally:
            with torch.no_grad():
                for n, t in backup.items():
                    self.local[n].copy_(t)
        return LossTest(own_before, own_after, random_before, random_after)

    @collective()
    def fingerprint(self) -> str | None:
        """The weights' fingerprint (rank 0; None elsewhere), the same for any number of ranks."""
        return self._fingerprint({n: t.detach() for n, t in self.local.items()})

    @collective()
    def ef_checksum(self) -> str | None:
        """The error-feedback residuals' fingerprint, in the parameters' layout (any number of ranks)."""
        ef = self.error_feedback
        rows = ef.buffers if self.sharded else {n: ef.residual(n) for n in ef.buffers}
        return self._fingerprint(rows)

    def _fingerprint(self, local: Mapping[str, torch.Tensor]) -> str | None:
        if not self.sharded:
            return compose((n, t.dtype, tuple(t.shape), leaves(t)) for n, t in local.items())
        entries = []
        for name, shape in sorted(self.spec.items()):
            t = local[name]
            parts = self._gather_bytes(row_digests(t) if len(shape) >= 2 else raw_bytes(t))
            if parts is not None:  # rows: their digests; a small 1-D tensor: its bytes, hashed here
                joined = b"".join(parts)
                entries.append((name, t.dtype, shape, joined if len(shape) >= 2 else hashlib.sha256(joined).digest()))
        return compose(entries) if self.world.main else None

    def _gather_bytes(self, data: bytes) -> list[bytes] | None:
        sizes = self.comm.all_gather(torch.tensor([len(data)]), [1] * self.world.size)
        lengths = [int(s.item()) for s in sizes]
        parts = self.comm.gather(torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else
                                 torch.zeros(0, dtype=torch.uint8), lengths)
        return None if parts is None else [p.numpy().tobytes() for p in parts]

    @collective()
    def weight_sample(self, count: int, seed: int) -> list[float] | None:
        """:func:`gauntlet.scoring.weight_sample` of the whole weights, from every rank's rows."""
        positions = sample_positions(self.spec, count, seed)
        if not self.sharded:
            flat = {n: t.detach().reshape(-1) for n, t in self.local.items()}
            return [float(flat[n][i]) for n, i in positions]
        values = torch.zeros(len(positions), dtype=torch.float64)
        for k, (name, i) in enumerate(positions):
            t = self.local[name]
            per_row = t.numel() // max(t.shape[0], 1) if t.dim() else 1
            lo = self.rows[name][0] * per_row
            if lo <= i < lo + t.numel():
                values[k] = float(t.detach().reshape(-1)[i - lo])
        import torch.distributed as dist

        dist.all_reduce(values, group=self.world.control)  # one rank holds each position: an exact sum
        return [float(v) for v in values] if self.world.main else None

    # --------------------------------------------------------------------------------- state

    @collective()
    def save_state(self, run_dir: str, name: str, window: int, meta: dict, durable: bool = True) -> None:
        """Save weights, optimiser and error feedback (those the engine has) with ``meta``."""
        if self.sharded:
            from gauntlet.parallel import checkpoint

            checkpoint.save(Path(run_dir), name, window, self._dcp_state(), meta, self.world.main,
                            _write_atomic(durable))
            return
        from peers.state import save_local

        save_local(Path(run_dir) / f"{name}.safetensors", self.model, self.error_feedback,
                   self.trainer.optimizer if self.trainer else None, meta, durable)

    @collective()
    def load_state(self, run_dir: str, name: str, run: str | None = None) -> dict | None:
        """Restore what :meth:`save_state` saved (re-sharded to this world size); its meta or None.
        With ``run``, a state of another run is refused before anything is loaded. A state saved in the
        other layout (one process ↔ torchrun) is refused with a StateError saying how to resume it."""
        _check_layout(Path(run_dir), name, self.sharded)
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

            from gauntlet.parallel import checkpoint

            state = self._dcp_state()
            meta = checkpoint.load(Path(run_dir), name, state, run)
            if meta is None:
                return None
            set_model_state_dict(self.model, state["model"])
            if self.trainer is not None:
                set_optimizer_state_dict(self.model, self.trainer.optimizer, state["optim"])
                for n, buf in self.error_feedback.buffers.items():
                    buf.copy_(state["ef"][n].to_local())
            return meta
        from peers.state import load_local

        return load_local(Path(run_dir) / f"{name}.safetensors", self.model, self.error_feedback,
                          self.trainer.optimizer if self.trainer else None, run)

    def _dcp_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        from gauntlet.parallel.checkpoint import as_dtensors

        state = {"model": get_model_state_dict(self.model)}
        if self.trainer is not None:
            state["optim"] = get_optimizer_state_dict(self.model, self.trainer.optimizer)
            state["ef"] = as_dtensors(self.error_feedback.buffers, self.spec, self.world.mesh)
        return state


def _check_layout(run_dir: Path, name: str, sharded: bool) -> None:
    from gauntlet.parallel.checkpoint import current
    from peers.state import StateError

    single, pointer = run_dir / f"{name}.safetensors", run_dir / f"{name}.json"
    if sharded and single.exists() and current(run_dir, name) is None:
        raise StateError(f"{single} is the state of a node run as one process; resume it the same way (without "
                         f"torchrun or --nproc), or start the sharded node in another --run-dir")
    if not sharded and pointer.exists() and not single.exists():
        raise StateError(f"{run_dir} holds the state of a node run under torchrun ({pointer.name}); resume it with "
                         f"--nproc N (any N: the state is re-sharded), or start in another --run-dir")


def _write_atomic(durable: bool):
    from peers.state import write_atomic

    return lambda path, data: write_atomic(path, data, durable)
