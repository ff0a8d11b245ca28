"""Node state of a sharded node through ``torch.distributed.checkpoint`` (DCP): atomic, re-shardable.

A state is a directory ``RUN_DIR/NAME-<window>/`` written by every rank with ``dcp.save`` (model and
optimiser through ``get_state_dict``, error feedback as ``Shard(0)`` DTensors built from each rank's
rows), plus ``meta.json`` from rank 0. It is written under a ``.partial`` name and renamed once
complete; then ``RUN_DIR/NAME.json`` (written atomically) points to it and older directories are
removed. A crash at any point leaves the previous complete state pointed to. Loading reads the
pointed state into templates for the *current* world size: DCP re-shards, so a node saved on 2
ranks resumes on 1 or 4.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, Replicate, Shard

from gauntlet.errors import GauntletError


class CheckpointError(GauntletError):
    """A sharded state directory is unreadable or does not match this model."""


def as_dtensors(local: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], mesh) -> dict:
    """Each rank's rows (``Shard(0)`` of the whole shape) as DTensors DCP can save and re-shard."""
    out = {}
    for name, t in local.items():
        shape = torch.Size(shapes[name])
        stride = torch.empty(shape, device="meta").stride()
        out[name] = DTensor.from_local(t, mesh, [Shard(0)], run_check=False, shape=shape, stride=stride)
    return out


def placed_like(local: Mapping[str, torch.Tensor], params: Mapping[str, DTensor]) -> dict[str, DTensor]:
    """Each rank's rows of a tensor shaped like a parameter (an outer loop's θ₀, a momentum buffer)
    as a DTensor placed exactly like that parameter: the same on every replica, so DCP keeps one copy
    and re-shards it. The DTensor shares the local tensor's storage (DCP loads into it in place)."""
    out = {}
    for name, t in local.items():
        p = params[name]
        out[name] = DTensor.from_local(t, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                       stride=p.stride())
    return out


def per_replica(local: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple[int, ...]], pair,
                replicate: str) -> dict[str, DTensor]:
    """Each rank's rows of a tensor that differs between replicas (a replica's error feedback) as one
    DTensor of shape ``(replicas, *shape)`` over the 2-D mesh ``pair``: ``Shard(0)`` along the
    ``replicate`` dimension, ``Shard(1)`` (the parameter's rows) along the other. DCP saves every
    replica's rows and re-shards them to another number of shard ranks."""
    replicas = pair.size(pair.mesh_dim_names.index(replicate))
    out = {}
    for name, t in local.items():
        shape = torch.Size((replicas, *shapes[name]))
        rows = Shard(1) if len(shapes[name]) else Replicate()
        placements = [Shard(0) if dim == replicate else rows for dim in pair.mesh_dim_names]
        stride = torch.empty(shape, device="meta").stride()
        out[name] = DTensor.from_local(t.unsqueeze(0), pair, placements, run_check=False, shape=shape, stride=stride)
    return out


def local_part(value: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    """The local tensor of a state entry (a DTensor from :func:`placed_like` / :func:`per_replica`, or a
    plain tensor), shaped like ``like``; CheckpointError when it holds other rows."""
    local = value.to_local() if isinstance(value, DTensor) else value
    if local.numel() != like.numel():
        raise CheckpointError(f"{what} holds {tuple(local.shape)} on this rank, not {tuple(like.shape)}: a state "
                              f"saved with another number of replicas, or not loaded into this wrapper's state_dict()")
    return local.reshape(like.shape)


def _pointer(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.json"


def current(run_dir: Path, name: str) -> Path | None:
    """The directory of the last complete state, or None."""
    ptr = _pointer(run_dir, name)
    if not ptr.exists():
        return None
    try:
        target = run_dir / json.loads(ptr.read_text())["dir"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"cannot read {ptr}: {exc}; move it away to start from the network's state") from exc
    if not (target / ".metadata").exists():
        raise CheckpointError(f"{ptr} points to {target}, which is incomplete; move both away to start over")
    return target


def save(run_dir: Path, name: str, window: int, state: dict, meta: dict, is_main: bool,
         write_atomic: Callable[[Path, bytes], None]) -> Path:
    """Collective: every rank saves its shards of ``state``; rank 0 adds ``meta`` and moves the
    pointer. ``write_atomic(path, data)`` writes a small file atomically."""
    final = run_dir / f"{name}-{window:010d}"
    partial = run_dir / f".{final.name}.partial"
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier()
    dcp.save(state, checkpoint_id=str(partial))
    _barrier()
    if is_main:
        (partial / "meta.json").write_text(json.dumps(meta))
        _fsync_dir(partial)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        write_atomic(_pointer(run_dir, name), json.dumps({"dir": final.name, "window": window}).encode())
        for old in run_dir.glob(f"{name}-*"):
            if old != final and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        for stale in run_dir.glob(f".{name}-*.partial"):
            shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    return final


def load(run_dir: Path, name: str, state: dict, run: str | None = None) -> dict | None:
    """Collective: fill ``state`` (templates for this world size) from the last complete state;
    returns its meta, or None when there is none. With ``run``, a state of another run is refused."""
    target = current(run_dir, name)
    if target is None:
        return None
    if run is not None:
        saved = json.loads((target / "meta.json").read_text()).get("run")
        if saved != run:
            raise CheckpointError(f"{target} belongs to run {saved!r}, not {run!r}; use another --run-dir")
    try:
        dcp.load(state, checkpoint_id=str(target))
        return json.loads((target / "meta.json").read_text())
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"cannot load {target}: {exc}") from exc


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
