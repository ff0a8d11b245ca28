"""Applying updates: decoding gathered messages, aggregating them into this rank's rows (one peer
decoded at a time) and the outer step; or setting the weights from a validator's checkpoint, which
rank 0 holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gauntlet.config import GauntletConfig
from gauntlet.sparseloco import decode_message, outer_step
from gauntlet.sparseloco.aggregate import aggregate_stream
from gauntlet.sparseloco.compress import CompressedTensor
from gauntlet.sparseloco.wire import Message
from peers.node.layout import ShardLayout
from peers.node.ranks import Ranks, collective


class Updates:
    NAME = "updates"

    def __init__(self, cfg: GauntletConfig, layout: ShardLayout, ranks: Ranks) -> None:
        self.cfg, self.layout, self.ranks = cfg, layout, ranks

    def apply(self, messages: Sequence[Message], want_full: bool = False) -> dict[str, torch.Tensor] | None:
        """Aggregate gathered, validated messages (in canonical order) and apply the outer step.
        Returns the aggregate on one process, or with ``want_full`` the whole one on rank 0."""
        return self.apply_messages([m.raw if self.layout.sharded else m for m in messages], want_full)

    def decode(self, items: Sequence) -> list[dict[str, CompressedTensor]]:
        """Decoded tensors of messages (:class:`Message`, spooled messages or bytes); bytes are messages
        rank 0 has already validated (signature included) when it gathered them, and are checked again
        for structure, not signature."""
        codec, out = self.cfg.sparseloco, []
        for item in items:
            if not isinstance(item, (bytes, bytearray, memoryview)):  # a Message, or a SpooledMessage
                tensors = item.tensors
            else:
                tensors = decode_message(bytes(item), spec=self.layout.spec, expected_codec=codec,
                                         require_signature=False, verify=lambda *_: True).tensors
            out.append({n: ct.to(self.layout.device) for n, ct in tensors.items()})
        return out

    @collective()
    def apply_messages(self, datas: list, want_full: bool = False) -> dict[str, torch.Tensor] | None:
        """Aggregate the messages (canonical order: as given) into this rank's rows, apply the outer
        step. With ``want_full``, rank 0 returns the whole aggregate."""
        c, lay = self.cfg.sparseloco, self.layout
        agg = aggregate_stream(lambda i: self.decode([datas[i]])[0], len(datas), c.combine, c.clip_to_median,
                               rows=lay.my_rows)  # one peer decoded at a time
        outer_step(lay.local, agg, c.outer_lr)
        if want_full:
            return lay.gather_full(agg)
        return agg if lay.world.main and not lay.sharded else None

    @collective(private=1)
    def load_full(self, tensors: Mapping[str, torch.Tensor] | None) -> None:
        """Set the weights from whole tensors rank 0 holds (a validator's checkpoint), one tensor at a
        time (``tensors`` may read each from a file when asked)."""
        local = self.layout.local
        with torch.no_grad():
            for n in self.layout.spec:
                local[n].copy_(self.layout.scatter_one(tensors, n).to(local[n].dtype))
