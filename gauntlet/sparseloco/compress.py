"""One tensor's compressed form, and how it is made from an error-feedback buffer (docs/protocol.md §2.5–2.6).

A :class:`CompressedTensor` is what a message carries for one tensor, unpacked: for sparse tensors
the chunk-local indices of the kept values (ascending within each chunk), their codes and the lookup
table; for dense tensors either 16-bit values or 8-bit codes with a lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import CodecError
from gauntlet.sparseloco.chunking import TensorLayout
from gauntlet.sparseloco.quant import dequantize, quantize


@dataclass(frozen=True)
class CompressedTensor:
    """The transmitted content of one tensor.

    Sparse: ``idx`` int64 ``(num_chunks, k)``, ``codes`` uint8 ``(num_chunks, k)``, ``lookup``.
    Dense 8-bit: ``codes`` uint8 ``(numel,)`` and ``lookup``. Dense 16-bit: ``raw`` bf16 ``(numel,)``.
    """

    layout: TensorLayout
    idx: torch.Tensor | None = None
    codes: torch.Tensor | None = None
    lookup: torch.Tensor | None = None
    raw: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "CompressedTensor":
        """The same content on another device."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return CompressedTensor(self.layout, move(self.idx), move(self.codes), move(self.lookup), move(self.raw))

    def values(self) -> torch.Tensor:
        """float32 decoded values: ``(num_chunks, k)`` when sparse, ``(numel,)`` when dense."""
        if self.raw is not None:
            return self.raw.float()
        return dequantize(self.codes, self.lookup)

    def to_dense(self) -> torch.Tensor:
        """The decoded update as a float32 tensor of the original shape."""
        lay, vals = self.layout, self.values()
        if not lay.sparse:
            return vals.reshape(lay.shape)
        buf = torch.zeros(lay.buffer_shape, device=vals.device)
        buf.scatter_(1, self.idx, vals)
        return lay.from_chunks(buf)


def select_topk(buf: torch.Tensor, layout: TensorLayout, pad_index: torch.Tensor | None = None,
                whole: bool = True) -> torch.Tensor:
    """Chunk-local indices (int64, ascending per chunk) of the k largest magnitudes per chunk.
    ``buf`` holds all chunks (``whole``) or a block of them whose padding is at ``pad_index``."""
    mag = buf.abs()
    if whole:
        pad_index = layout.pad_index
    if pad_index is not None:
        mag.view(-1).index_fill_(0, pad_index.to(mag.device), -1.0)
    idx = mag.topk(layout.k, dim=1, sorted=False).indices
    return idx.sort(dim=1).values


def compress_buffer(buf: torch.Tensor, layout: TensorLayout, cfg: SparseLoCoConfig) -> CompressedTensor:
    """Compress a chunked buffer (``layout.buffer_shape``, float) into what a message carries."""
    if layout.sparse:
        idx = select_topk(buf, layout)
        codes, lookup = quantize(buf.gather(1, idx), cfg.quant_bits, cfg.quant_range_sigmas)
        return CompressedTensor(layout, idx=idx, codes=codes, lookup=lookup)
    if cfg.dense_bits == 8:
        codes, lookup = quantize(buf, 8, cfg.quant_range_sigmas)
        return CompressedTensor(layout, codes=codes, lookup=lookup)
    raw = buf.to(torch.bfloat16)
    if not torch.isfinite(raw).all():
        raise CodecError("cannot encode non-finite values: the pseudo-gradient holds NaN or Inf")
    return CompressedTensor(layout, raw=raw)


def subtract_decoded(buf: torch.Tensor, ct: CompressedTensor) -> None:
    """``buf -= decode(ct)`` in place: what error feedback keeps after sending ``ct``."""
    if ct.layout.sparse:
        buf.scatter_add_(1, ct.idx, ct.values().neg_().to(buf.dtype))
    else:
        buf.sub_(ct.values().to(buf.dtype))
