"""A node's local state on disk when it runs as one process: everything a restart needs, in one
atomic safetensors file (under torchrun, :mod:`gauntlet.parallel.checkpoint` writes DCP folders).

``state.safetensors`` (a validator's: ``validator.safetensors``) holds the model weights (``model.*``), the error-feedback residuals (``ef.*``)
and the inner optimiser's tensors (``opt.{index}.{name}``); its metadata holds the last completed
window, the inner step and the optimiser's parameter groups as JSON. It is written to a temporary
file, flushed and renamed over the previous one, so a crash at any point leaves the old or the new
state, never a mix. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from gauntlet.errors import GauntletError
from gauntlet.sparseloco.feedback import ErrorFeedback

class StateError(GauntletError):
    """The local state file is unreadable or belongs to another model or run."""


@dataclass
class LocalState:
    window: int  # last window whose outer step is applied
    inner_step: int
    run: str


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush (and fsync it and its directory),
    rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        if durable:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def read_state_file(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]] | None:
    """(metadata, tensors) of a state file, None when it does not exist; StateError when unreadable."""
    if not path.exists():
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}, {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise StateError(f"cannot read {path}: {exc}; move it away to start from the network's state") from exc


def save_local(path: Path, model: torch.nn.Module, ef: ErrorFeedback | None, optimizer: torch.optim.Optimizer | None,
               meta: dict[str, str], durable: bool = True) -> None:
    """One atomic safetensors file: weights (``model.*``), residuals (``ef.*``) and optimiser tensors
    (``opt.{index}.{name}``; its parameter groups go into the metadata) of whichever are given."""
    tensors = {f"model.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    meta = dict(meta)
    if ef is not None:
        tensors.update({k: v.detach().cpu().contiguous() for k, v in ef.state_dict().items()})
    if optimizer is not None:
        opt = optimizer.state_dict()
        for idx, slots in opt["state"].items():
            for name, value in slots.items():
                tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
        meta["param_groups"] = json.dumps(opt["param_groups"])
    save_atomic(path, tensors, meta, durable)


def save_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], durable: bool = True) -> None:
    """``tensors`` as a safetensors file written straight to a temporary file beside ``path`` (no copy of
    the whole file in memory), fsynced with its directory when ``durable``, then renamed over ``path``:
    a crash leaves the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial"
    safetensors.torch.save_file(tensors, str(tmp), metadata=meta)
    if durable:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry itself is flushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_local(path: Path, model: torch.nn.Module, ef: ErrorFeedback | None,
               optimizer: torch.optim.Optimizer | None, run: str | None = None) -> dict[str, str] | None:
    """Restore :func:`save_local`'s file into the given objects; its metadata, or None if absent.
    With ``run``, a file of another run is refused before anything is loaded. Weights and residuals
    are read one tensor at a time into the objects' own tensors (host memory: the largest tensor, not
    a second copy of the state); the optimiser's tensors become its state."""
    if not path.exists():
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if run is not None and meta.get("run") != run:
                raise StateError(f"{path} belongs to run {meta.get('run')!r}, not {run!r}; use another --run-dir")
            names = set(fh.keys())
            _copy_into({n: p for n, p in model.named_parameters()}, "model.", fh, names, path)
            if ef is not None:
                _copy_into(ef.buffers, "ef.", fh, names, path)
            if optimizer is not None:
                opt_state: dict[int, dict[str, torch.Tensor]] = {}
                for key in sorted(k for k in names if k.startswith("opt.")):
                    _, idx, name = key.split(".", 2)
                    opt_state.setdefault(int(idx), {})[name] = fh.get_tensor(key)
                optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    except StateError:
        raise
    except Exception as exc:  # safetensors' own error types, a malformed optimiser entry
        raise StateError(f"cannot read {path}: {exc}; move it away to start from the network's state") from exc
    return meta


def _copy_into(targets: dict[str, torch.Tensor], prefix: str, fh, names: set[str], path: Path) -> None:
    """Copy each ``prefix + name`` tensor of an open safetensors file into ``targets[name]``, one at a
    time, refusing a missing tensor or another shape."""
    with torch.no_grad():
        for name, target in targets.items():
            key = prefix + name
            if key not in names:
                raise StateError(f"{path} does not match this model (no tensor {key})")
            src = fh.get_tensor(key)
            if src.shape != target.shape:
                raise StateError(f"{path} does not match this model (tensor {key} is {tuple(src.shape)}, "
                                 f"not {tuple(target.shape)})")
            target.copy_(src)


def state_meta(state: LocalState) -> dict[str, str]:
    return {"window": str(state.window), "inner_step": str(state.inner_step), "run": state.run}


def parse_state_meta(meta: dict[str, str] | None, where: Path, run: str) -> LocalState | None:
    """The peer's :class:`LocalState` from saved metadata (None: nothing saved)."""
    if meta is None:
        return None
    if meta.get("run") != run:
        raise StateError(f"{where} belongs to run {meta.get('run')!r}, not {run!r}; use another --run-dir")
    try:
        return LocalState(int(meta["window"]), int(meta["inner_step"]), run)
    except (KeyError, ValueError) as exc:
        raise StateError(f"cannot read the state in {where}: {exc}; move it away to start over") from exc


def state_size(run_dir: Path, name: str) -> int:
    """Bytes a node's saved state takes in ``run_dir`` (one file, or torch.distributed.checkpoint
    folders and their pointer). A few stat calls."""
    run_dir = Path(run_dir)
    files = [run_dir / f"{name}.safetensors", run_dir / f"{name}.json"]
    files += [f for d in run_dir.glob(f"{name}-*") if d.is_dir() for f in d.rglob("*")]
    return sum(f.stat().st_size for f in files if f.is_file())
