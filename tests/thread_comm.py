"""N ranks as threads of one process, for fast tests of the sharded codec's arithmetic. Each call
is a rendezvous (a barrier) like a real collective; the real torch.distributed path has its own
tests under torchrun."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


class _World:
    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.box: list[object] = [None] * size


class ThreadComm:
    def __init__(self, world: _World, rank: int) -> None:
        self.world, self.rank, self.world_size = world, rank, world.size

    def _exchange(self, item: object) -> list[object]:
        self.world.box[self.rank] = item
        self.world.barrier.wait()
        got = list(self.world.box)
        self.world.barrier.wait()
        return got

    def all_to_all(self, send: list[torch.Tensor], recv_sizes: list[int]) -> list[torch.Tensor]:
        got = self._exchange([t.clone() for t in send])
        out = [got[r][self.rank] for r in range(self.world_size)]
        assert [t.numel() for t in out] == recv_sizes, "a rank's plan disagrees with another's"
        return out

    def all_gather(self, tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        got = self._exchange(tensor.clone())
        assert [t.numel() for t in got] == sizes
        return got

    def gather(self, tensor: torch.Tensor, sizes: list[int], dst: int = 0) -> list[torch.Tensor] | None:
        got = self.all_gather(tensor, sizes)
        return got if self.rank == dst else None


def run_ranks(world: int, fn: Callable[[ThreadComm], object]) -> list[object]:
    """``fn(comm)`` on every rank, concurrently; returns each rank's result (re-raises a failure)."""
    shared = _World(world)
    results: list[object] = [None] * world
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(shared, rank))
        except BaseException as exc:  # noqa: BLE001  (reported to the caller)
            errors.append(exc)
            shared.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results
