"""The ranks of one node (a peer or a validator running on N devices) and how they talk.

Started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*`` in the environment):
NCCL when CUDA is present, gloo otherwise, the same code either way. Rank 0 does all chain and
storage I/O and drives the others with *commands*: an operation name and its arguments, sent as
JSON plus raw tensor bytes over a gloo control group (never pickle). Every collective has a
timeout, so a rank that dies or hangs makes the others fail with an error instead of hanging; under
``torchrun`` the launcher also stops the remaining ranks as soon as one exits with an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import signal
import struct
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from gauntlet.errors import ConfigError, TransportError

DTYPES = {str(t).removeprefix("torch."): t for t in (torch.float32, torch.float64, torch.bfloat16, torch.float16,
                                                      torch.int64, torch.int32, torch.int16, torch.uint8,
                                                      torch.bool)}
MAX_COMMAND_BYTES = 1 << 34  # a command carries at most the messages of one window


@dataclass
class World:
    """This process's place among the ranks of one node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "none"
    control: Any = None  # gloo process group for commands and bytes (None: not distributed)
    mesh: Any = None  # 1-D DeviceMesh over the ranks (None: not distributed)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.control is not None


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``): a rank whose
    launcher was killed must not go on training alone. A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before we asked
        os._exit(1)


def init_world(device: str = "auto", timeout_s: float = 300.0) -> World:
    """Join the process group ``torchrun`` set up. ``device``: ``auto`` (CUDA when present), ``cpu``
    or ``cuda``. Collectives time out after ``timeout_s`` seconds."""
    if not launched_by_torchrun():
        raise ConfigError("not started by torchrun: run `torchrun --nproc_per_node N -m peers.cli ...` or pass "
                          "--nproc N")
    die_with_parent()  # torchrun's agent: if it is killed, so are its ranks
    rank, size, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("model.device asks for CUDA but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    timeout = timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout, **({"device_id": dev} if use_cuda else {}))
    control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    mesh = init_device_mesh(dev.type, (size,), mesh_dim_names=("shard",))
    return World(rank, size, local, dev, backend, control, mesh)


def shutdown(world: World) -> None:
    """Leave the process group together: a barrier first (a rank that tears down its connections
    while another still uses them aborts the process), then the group is destroyed."""
    if not (world.distributed and dist.is_initialized()):
        return
    try:
        dist.barrier(group=world.control)
    except (RuntimeError, dist.DistBackendError):
        pass  # another rank is already gone: nothing left to wait for
    dist.destroy_process_group()


def exit_now(code: int) -> None:
    """End a rank's process once its process group is shut down: flush and ``os._exit``. Letting the
    interpreter finalise instead can abort it, when gloo's worker threads release tensors while
    Python is being torn down (pytorch/pytorch#179291); nothing is left to clean up by then."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


# --------------------------------------------------------------------------------- bytes

def broadcast_bytes(world: World, data: bytes | None, src: int = 0) -> bytes:
    """``data`` of rank ``src`` on every rank (a length, then the bytes; gloo control group)."""
    if not world.distributed:
        return data or b""
    size = torch.tensor([len(data) if world.rank == src else 0], dtype=torch.int64)
    _collective(dist.broadcast, size, src=src, group=world.control)
    n = int(size.item())
    if n > MAX_COMMAND_BYTES:
        raise TransportError(f"rank {src} broadcast {n} bytes, over the {MAX_COMMAND_BYTES}-byte limit")
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if world.rank == src and n else \
        torch.empty(n, dtype=torch.uint8)
    if n:
        _collective(dist.broadcast, buf, src=src, group=world.control)
    return data if world.rank == src else buf.numpy().tobytes()


def _collective(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as exc:
        raise TransportError(f"a rank of this node stopped answering ({exc}); stopping this rank too") from exc


# ------------------------------------------------------------------------------ commands

def encode_call(name: str, args: tuple | list) -> bytes:
    """``name(*args)`` as bytes: a length-prefixed JSON header, then the raw bytes of every tensor
    and bytes argument. Arguments: None, bool, int, float, str, bytes, tensors, lists, dicts."""
    blobs: list[bytes] = []

    def enc(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            blobs.append(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            return {"__tensor__": len(blobs) - 1, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        if isinstance(x, (bytes, bytearray, memoryview)):
            blobs.append(bytes(x))
            return {"__bytes__": len(blobs) - 1}
        if isinstance(x, (list, tuple)):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            return {"__dict__": [[str(k), enc(v)] for k, v in x.items()]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot send a {type(x).__name__} to the other ranks")

    encoded = enc(list(args))  # fills blobs
    raw = json.dumps({"op": name, "args": encoded, "sizes": [len(b) for b in blobs]}).encode()
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def decode_call(data: bytes) -> tuple[str, list]:
    """The inverse of :func:`encode_call` (for bytes from rank 0 of this node)."""
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    offsets, pos = [], 8 + n
    for size in header["sizes"]:
        offsets.append((pos, pos + size))
        pos += size
    if pos != len(data):
        raise TransportError("a command's size does not match its header")

    def dec(x):
        if isinstance(x, list):
            return [dec(v) for v in x]
        if isinstance(x, dict):
            if "__tensor__" in x:
                a, b = offsets[x["__tensor__"]]
                dtype = DTYPES[x["dtype"]]
                buf = bytearray(data[a:b])
                flat = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
                return flat.reshape(x["shape"])
            if "__bytes__" in x:
                a, b = offsets[x["__bytes__"]]
                return data[a:b]
            return {k: dec(v) for k, v in x["__dict__"]}
        return x

    return header["op"], dec(header["args"])
