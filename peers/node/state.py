"""A node's local state through the engine: save and restore weights, optimiser and error feedback —
one safetensors file on one process (:mod:`peers.node.state_files`), a ``torch.distributed.checkpoint``
directory under torchrun (re-sharded to any number of ranks on load) — and the whole weights on rank 0
for checkpoints and exports."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from gauntlet.config import GauntletConfig
from gauntlet.models import build_model
from gauntlet.parallel import checkpoint
from gauntlet.parallel.checkpoint import as_dtensors
from peers.node.layout import ShardLayout
from peers.node.ranks import Ranks, collective
from peers.node.state_files import StateError, load_local, save_local, write_atomic
from peers.node.training import Training


class StateIO:
    NAME = "state"

    def __init__(self, cfg: GauntletConfig, model: torch.nn.Module, layout: ShardLayout, ranks: Ranks,
                 training: Training | None) -> None:
        self.cfg, self.model, self.layout, self.ranks = cfg, model, layout, ranks
        self.training = training  # a peer's optimiser and error feedback (None on a validator)

    @collective()
    def save(self, run_dir: str, name: str, window: int, meta: dict, durable: bool = True) -> None:
        """Save weights, optimiser and error feedback (those the engine has) with ``meta``."""
        if self.layout.sharded:
            checkpoint.save(Path(run_dir), name, window, self._dcp_state(), meta, self.layout.world.main,
                            lambda path, data: write_atomic(path, data, durable))
            return
        t = self.training
        save_local(Path(run_dir) / f"{name}.safetensors", self.model, t and t.error_feedback,
                   t and t.trainer.optimizer, meta, durable)

    @collective()
    def load(self, run_dir: str, name: str, run: str | None = None) -> dict | None:
        """Restore what :meth:`save` saved (re-sharded to this world size); its meta or None.
        With ``run``, a state of another run is refused before anything is loaded. A state saved in the
        other layout (one process ↔ torchrun) is refused with a StateError saying how to resume it."""
        check_layout(Path(run_dir), name, self.layout.sharded)
        t = self.training
        if not self.layout.sharded:
            return load_local(Path(run_dir) / f"{name}.safetensors", self.model, t and t.error_feedback,
                              t and t.trainer.optimizer, run)
        state = self._dcp_state()
        meta = checkpoint.load(Path(run_dir), name, state, run)
        if meta is None:
            return None
        set_model_state_dict(self.model, state["model"])
        if t is not None:
            set_optimizer_state_dict(self.model, t.trainer.optimizer, state["optim"])
            for n, buf in t.error_feedback.buffers.items():
                buf.copy_(state["ef"][n].to_local())
        return meta

    def _dcp_state(self) -> dict:
        state = {"model": get_model_state_dict(self.model)}
        t = self.training
        if t is not None:
            state["optim"] = get_optimizer_state_dict(self.model, t.trainer.optimizer)
            state["ef"] = as_dtensors(t.error_feedback.buffers, self.layout.spec, self.layout.world.mesh)
        return state

    @collective()
    def full_state(self) -> dict[str, torch.Tensor] | None:
        """Every whole parameter on rank 0 (checkpoints, exports); None elsewhere."""
        return self.layout.gather_full({n: t.detach() for n, t in self.layout.local.items()})

    def whole_model(self, vocab_size: int) -> torch.nn.Module:
        """The model with whole weights (rank 0): the model itself on one process, else an unsharded
        copy on the CPU (for a Hugging Face export)."""
        if not self.layout.sharded:
            return self.model
        state = self.full_state()
        copy = build_model(self.cfg.model.model_copy(update={"device": "cpu"}), vocab_size, self.cfg.data.seq_len,
                           seed=self.cfg.seed)
        with torch.no_grad():
            for name, p in copy.named_parameters():
                p.copy_(state[name])
        return copy


def check_layout(run_dir: Path, name: str, sharded: bool) -> None:
    """Refuse a state saved in the other layout (one process ↔ torchrun), saying how to resume it."""
    single, pointer = run_dir / f"{name}.safetensors", run_dir / f"{name}.json"
    if sharded and single.exists() and checkpoint.current(run_dir, name) is None:
        raise StateError(f"{single} is the state of a node run as one process; resume it the same way (without "
                         f"torchrun or --nproc), or start the sharded node in another --run-dir")
    if not sharded and pointer.exists() and not single.exists():
        raise StateError(f"{run_dir} holds the state of a node run under torchrun ({pointer.name}); resume it with "
                         f"--nproc N (any N: the state is re-sharded), or start in another --run-dir")
