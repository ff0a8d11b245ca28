"""Error feedback (docs/protocol.md §2.4): the residual a peer keeps between windows.

    e ← β·e + η·Δ;   m = Q(TopK(e));   e ← e − decode(m)

The peer decodes its own message, so the residual keeps both what top-k dropped and the
quantisation error. Buffers are float32 in chunked layout, which makes top-k a row-wise operation
and lets the update ``β·e + η·Δ`` read Δ through a strided view instead of copying it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import CodecError
from gauntlet.sparseloco.chunking import TensorLayout, make_layout
from gauntlet.sparseloco.compress import CompressedTensor, compress_buffer, subtract_decoded


class ErrorFeedback:
    """Error-feedback buffers for a fixed set of named tensors."""

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...] | torch.Size],
        cfg: SparseLoCoConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.layouts: dict[str, TensorLayout] = {n: make_layout(s, cfg) for n, s in sorted(shapes.items())}
        self.buffers: dict[str, torch.Tensor] = {
            n: torch.zeros(lay.buffer_shape, dtype=torch.float32, device=device) for n, lay in self.layouts.items()
        }

    def compress(self, delta: Mapping[str, torch.Tensor]) -> dict[str, CompressedTensor]:
        """Fold Δ into the residuals, compress them, and subtract what was sent."""
        missing = self.layouts.keys() - delta.keys()
        if missing:
            raise CodecError(f"pseudo-gradient lacks {len(missing)} tensors, e.g. {sorted(missing)[0]!r}")
        out: dict[str, CompressedTensor] = {}
        for name, lay in self.layouts.items():
            d = delta[name]
            if tuple(d.shape) != lay.shape:
                raise CodecError(f"{name}: pseudo-gradient shape {tuple(d.shape)} != {lay.shape}")
            buf = self.buffers[name]
            buf.mul_(self.cfg.ef_decay)
            lay.add_into_chunks(buf, d.detach(), alpha=self.cfg.ef_scale)
            ct = compress_buffer(buf, lay, self.cfg)
            subtract_decoded(buf, ct)
            out[name] = ct
        return out

    def residual(self, name: str) -> torch.Tensor:
        """The residual of one tensor in its original shape (a copy)."""
        return self.layouts[name].from_chunks(self.buffers[name]).clone()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"ef.{n}": b for n, b in self.buffers.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, buf in self.buffers.items():
            src = state.get(f"ef.{name}")
            if src is None or src.shape != buf.shape:
                raise CodecError(f"error-feedback state for {name!r} is missing or has the wrong shape")
            buf.copy_(src)
