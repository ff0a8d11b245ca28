"""Transports: how the peers of a synchronous trainer exchange their encoded messages.

A transport hands every rank the payloads of all ranks, in rank order. Payloads are opaque bytes
(the signed wire format); nothing is pickled. The bucket transport of the permissionless network
lives with the storage layer; the ones here serve trainers that already share a process group.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist

from gauntlet.errors import TransportError


class Transport(Protocol):
    rank: int
    world_size: int

    def exchange(self, payload: bytes) -> list[bytes]:
        """All ranks' payloads, in rank order (this rank's included)."""
        ...


class SoloTransport:
    """A world of one: for single-process training and for debugging the outer loop."""

    rank = 0
    world_size = 1

    def exchange(self, payload: bytes) -> list[bytes]:
        return [payload]


class TorchDistributedTransport:
    """All-gather of the encoded bytes over an initialised ``torch.distributed`` process group.

    Sizes are gathered first (one int64 per rank), then the payloads padded to the largest. Works
    with gloo on CPU and NCCL on GPU (buffers live on the current CUDA device for NCCL).
    """

    def __init__(self, group: dist.ProcessGroup | None = None, max_bytes: int = 1 << 31) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise TransportError("torch.distributed is not initialised: call dist.init_process_group first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.max_bytes = max_bytes
        backend = dist.get_backend(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    def exchange(self, payload: bytes) -> list[bytes]:
        size = torch.tensor([len(payload)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size, group=self.group)
        lengths = [int(s.item()) for s in sizes]
        longest = max(lengths)
        if longest > self.max_bytes:
            raise TransportError(f"a rank sent {longest} bytes, over the {self.max_bytes}-byte limit")
        buf = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        if payload:
            buf[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(self.device)
        outs = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(outs, buf, group=self.group)
        return [out[:n].cpu().numpy().tobytes() for out, n in zip(outs, lengths)]
