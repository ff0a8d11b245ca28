"""Which rows of each parameter this rank holds, and the collectives that move whole tensors to and
from those rows. On one process a rank holds everything and these are identities."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist

from gauntlet.errors import ConfigError
from gauntlet.parallel.comm import TorchShardComm
from gauntlet.parallel.fsdp import check_sharding, local_tensors, shard_model
from gauntlet.parallel.world import World
from gauntlet.sparseloco.sharding import shard_rows


class ShardLayout:
    def __init__(self, model: torch.nn.Module, world: World, spec: Mapping[str, tuple[int, ...]]) -> None:
        self.world, self.spec = world, spec
        self.comm: TorchShardComm | None = None
        if world.distributed:
            shard_model(model, world.mesh)
            check_sharding(dict(model.named_parameters()), world.size, world.rank)
            self.comm = TorchShardComm(device=world.device)
        params = dict(model.named_parameters())
        self.local = local_tensors(params) if world.distributed else params  # this rank's rows, by name
        self.rows = {n: shard_rows(s[0] if s else 1, world.size, world.rank) for n, s in spec.items()}
        self.device = next(iter(self.local.values())).device

    @property
    def sharded(self) -> bool:
        return self.world.distributed

    @property
    def my_rows(self) -> dict[str, tuple[int, int]] | None:
        """This rank's row range of each tensor when sharded (None: it holds them whole)."""
        return self.rows if self.sharded else None

    def my_part(self, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
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

    def mean_over_ranks(self, value: float) -> float:
        if not self.sharded:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, group=self.world.control)
        return float(t.item()) / self.world.size

    def sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over the ranks (in place; unchanged on one process)."""
        if self.sharded:
            dist.all_reduce(values, group=self.world.control)
        return values

    def sizes(self, name: str) -> list[int]:
        """Elements of ``name`` each rank holds."""
        shape = self.spec[name]
        per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
        return [(y - x) * per_row for x, y in
                (shard_rows(shape[0] if shape else 1, self.world.size, r) for r in range(self.world.size))]

    def scatter_one(self, full: Mapping[str, torch.Tensor] | None, name: str) -> torch.Tensor:
        """This rank's rows of the whole tensor ``name`` that rank 0 holds (every rank calls it, in
        the same order of names)."""
        if not self.sharded:
            return full[name]
        sizes = self.sizes(name)
        if self.world.main:
            send = list(full[name].to(self.device, torch.float32).reshape(-1).split(sizes))
        else:
            send = [torch.zeros(0, device=self.device) for _ in sizes]
        got = self.comm.all_to_all(send, [sizes[self.world.rank] if r == 0 else 0 for r in range(len(sizes))])
        return got[0].view(self.local[name].shape)

    def gather_full(self, local: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Whole tensors on rank 0 from every rank's rows (None elsewhere)."""
        if not self.sharded:
            return dict(local)
        out = {}
        for name, shape in self.spec.items():
            parts = self.comm.gather(local[name].reshape(-1).float().contiguous(), self.sizes(name))
            if parts is not None:
                out[name] = torch.cat(parts).reshape(shape).cpu()
        return out if self.world.main else None

    def gather_bytes(self, data: bytes) -> list[bytes] | None:
        """Every rank's ``data`` on rank 0, in rank order (None elsewhere)."""
        sizes = self.comm.all_gather(torch.tensor([len(data)]), [1] * self.world.size)
        lengths = [int(s.item()) for s in sizes]
        parts = self.comm.gather(torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else
                                 torch.zeros(0, dtype=torch.uint8), lengths)
        return None if parts is None else [p.numpy().tobytes() for p in parts]
