"""The sharded codec's collectives (:class:`gauntlet.sparseloco.sharding.ShardComm`) over a
``torch.distributed`` process group: uneven ``all_to_all_single``, and all-gather / gather of 1-D
tensors whose sizes every rank knows beforehand (padded to the largest, then trimmed)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from gauntlet.errors import TransportError


class TorchShardComm:
    """Collectives among the ranks of ``group`` (default: all), on ``device`` (CUDA for NCCL)."""

    def __init__(self, group=None, device: torch.device | str = "cpu") -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.device = torch.device(device)

    def _run(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs, group=self.group)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise TransportError(f"a rank stopped answering during {fn.__name__} ({exc})") from exc

    def all_to_all(self, send: list[torch.Tensor], recv_sizes: list[int]) -> list[torch.Tensor]:
        dtype = send[self.rank].dtype
        inp = torch.cat([s.reshape(-1).to(self.device, dtype) for s in send])
        out = torch.empty(sum(recv_sizes), dtype=dtype, device=self.device)
        self._run(dist.all_to_all_single, out, inp, output_split_sizes=list(recv_sizes),
                  input_split_sizes=[s.numel() for s in send])
        return list(out.split(list(recv_sizes)))

    def _padded(self, tensor: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, int]:
        if tensor.numel() != sizes[self.rank]:
            raise TransportError(f"rank {self.rank} has {tensor.numel()} values where the plan says {sizes[self.rank]}")
        longest = max(sizes) if sizes else 0
        buf = torch.zeros(longest, dtype=tensor.dtype, device=self.device)
        buf[: tensor.numel()] = tensor.reshape(-1)
        return buf, longest

    def all_gather(self, tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        buf, longest = self._padded(tensor, sizes)
        outs = [torch.empty(longest, dtype=buf.dtype, device=self.device) for _ in sizes]
        self._run(dist.all_gather, outs, buf)
        return [o[:n] for o, n in zip(outs, sizes)]

    def gather(self, tensor: torch.Tensor, sizes: list[int], dst: int = 0) -> list[torch.Tensor] | None:
        buf, longest = self._padded(tensor, sizes)
        if self.device.type == "cuda":  # NCCL has no gather: all-gather and keep it on dst
            out = self.all_gather(tensor, sizes)
            return out if self.rank == dst else None
        outs = [torch.empty(longest, dtype=buf.dtype) for _ in sizes] if self.rank == dst else None
        self._run(dist.gather, buf, outs, dst=dist.get_global_rank(self.group, dst) if self.group else dst)
        return None if outs is None else [o[:n] for o, n in zip(outs, sizes)]
