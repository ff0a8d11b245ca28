"""How a tensor of any shape is cut into chunks for per-chunk top-k.

A tensor is first viewed as 2-D: ``(shape[0], rest)`` for rank ≥ 2 and ``(1, n)`` for rank 1. Each
axis is then split into ``t = ceil(n / target)`` tiles of equal side ``ceil(n / t)``, so a dimension
that the chunk side does not divide (even a prime one) is padded by fewer than ``t`` rows or
columns instead of degrading to tiny chunks (the reference's "largest divisor" rule gives chunk side
1 for a prime dimension). Rows use ``chunk_size`` as target; columns use ``chunk_size² // side_r``,
so every chunk holds close to ``chunk_size²`` values whatever the aspect ratio. The number kept per
chunk scales with the chunk's size so that the density stays ``topk / chunk_size²``.

Chunked buffers have shape ``(num_chunks, chunk_numel)``; chunk ``(i, j)`` of the tile grid is row
``i * tiles_c + j`` and holds its tile in row-major order. Padding positions (if any) are zero and
are never selected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from gauntlet.config import SparseLoCoConfig

INDEX_BITS_SMALL = 12  # enough for chunks of at most 4096 values
INDEX_BITS_LARGE = 16  # chunks of up to 65536 values


def _split(n: int, target: int) -> tuple[int, int]:
    """(tiles, side) covering n with tiles of equal side ≤ target and padding < tiles."""
    tiles = -(-n // target)
    return tiles, -(-n // tiles)


@dataclass(frozen=True)
class TensorLayout:
    """Everything the codec needs to know about one tensor, derived from its shape and the config."""

    shape: tuple[int, ...]
    sparse: bool
    rows: int = 0
    cols: int = 0
    side_r: int = 0
    side_c: int = 0
    tiles_r: int = 0
    tiles_c: int = 0
    k: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def num_chunks(self) -> int:
        return self.tiles_r * self.tiles_c

    @property
    def chunk_numel(self) -> int:
        return self.side_r * self.side_c

    @property
    def kept(self) -> int:
        """Values transmitted for this tensor (all of them when dense)."""
        return self.num_chunks * self.k if self.sparse else self.numel

    @property
    def index_bits(self) -> int:
        return INDEX_BITS_SMALL if self.chunk_numel <= 1 << INDEX_BITS_SMALL else INDEX_BITS_LARGE

    @property
    def padded(self) -> bool:
        return self.sparse and (self.tiles_r * self.side_r != self.rows or self.tiles_c * self.side_c != self.cols)

    @property
    def buffer_shape(self) -> tuple[int, ...]:
        """Shape of the chunked buffer (error feedback, aggregation) for this tensor."""
        return (self.num_chunks, self.chunk_numel) if self.sparse else (self.numel,)

    @cached_property
    def pad_mask(self) -> torch.Tensor | None:
        """Bool ``(num_chunks, chunk_numel)``: True at padding positions; None when unpadded."""
        if not self.padded:
            return None
        real = torch.ones(self.rows, self.cols, dtype=torch.bool)
        return ~self._tile(real, fill=False)

    @cached_property
    def pad_index(self) -> torch.Tensor | None:
        """Flat positions of the padding in the chunked buffer (int64), or None."""
        mask = self.pad_mask
        return None if mask is None else mask.view(-1).nonzero().squeeze(1)

    def _tile(self, x2d: torch.Tensor, fill: float | bool = 0) -> torch.Tensor:
        pr = self.tiles_r * self.side_r - self.rows
        pc = self.tiles_c * self.side_c - self.cols
        if pr or pc:
            x2d = F.pad(x2d, (0, pc, 0, pr), value=fill)
        tiles = x2d.reshape(self.tiles_r, self.side_r, self.tiles_c, self.side_c).permute(0, 2, 1, 3)
        return tiles.reshape(self.num_chunks, self.chunk_numel)

    def to_chunks(self, x: torch.Tensor) -> torch.Tensor:
        """A new ``buffer_shape`` tensor holding x in chunk order (padding zero)."""
        if not self.sparse:
            return x.reshape(-1).clone()
        return self._tile(x.reshape(self.rows, self.cols))

    def add_into_chunks(self, buf: torch.Tensor, x: torch.Tensor, alpha: float = 1.0) -> None:
        """``buf += alpha * to_chunks(x)`` without materialising the chunked copy when unpadded.

        ``alpha · x`` is rounded before the addition (two exactly rounded operations, never a fused
        multiply-add), so the result does not depend on how the tensors are laid out in memory: a
        rank holding some rows of ``x`` computes the same bits for them (see :mod:`.sharding`)."""
        if alpha != 1.0:
            x = x * alpha
        if not self.sparse:
            buf.add_(x.reshape(-1))
        elif self.padded:
            buf.add_(self._tile(x.reshape(self.rows, self.cols).to(buf.dtype)))
        else:
            view = x.reshape(self.tiles_r, self.side_r, self.tiles_c, self.side_c).permute(0, 2, 1, 3)
            buf.view(self.tiles_r, self.tiles_c, self.side_r, self.side_c).add_(view)

    def chunk_view_of(self, x: torch.Tensor) -> torch.Tensor:
        """A strided 4-D view of an unpadded tensor, indexed like ``buffer.view(tr, tc, sr, sc)``."""
        assert self.sparse and not self.padded
        return x.view(self.tiles_r, self.side_r, self.tiles_c, self.side_c).permute(0, 2, 1, 3)

    def from_chunks(self, buf: torch.Tensor) -> torch.Tensor:
        """The tensor of ``shape`` held by a chunked buffer (padding dropped)."""
        if not self.sparse:
            return buf.reshape(self.shape)
        tiles = buf.reshape(self.tiles_r, self.tiles_c, self.side_r, self.side_c).permute(0, 2, 1, 3)
        full = tiles.reshape(self.tiles_r * self.side_r, self.tiles_c * self.side_c)
        return full[: self.rows, : self.cols].reshape(self.shape)


    # ---------------------------------------------------------------------- blocks of tile-rows
    # A rank that holds some rows of a tensor works on the tile-rows [t0, t1) those rows touch (or
    # that it owns, see :mod:`.sharding`): chunks t0·tiles_c … t1·tiles_c − 1, a contiguous range.

    def tile_rows_of(self, start: int, stop: int) -> tuple[int, int]:
        """Tile-rows overlapping rows [start, stop) of the 2-D view (empty range when start == stop)."""
        if start >= stop:
            return (0, 0)
        return start // self.side_r, -(-stop // self.side_r)

    def block_rows(self, t0: int, t1: int) -> tuple[int, int]:
        """Rows of the 2-D view covered by tile-rows [t0, t1)."""
        return min(self.rows, t0 * self.side_r), min(self.rows, t1 * self.side_r)

    def block_to_chunks(self, x2d: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """Chunks of tile-rows [t0, t1) from the rows they cover (``x2d``: those rows × cols)."""
        pr = (t1 - t0) * self.side_r - x2d.shape[0]
        pc = self.tiles_c * self.side_c - self.cols
        if pr or pc:
            x2d = F.pad(x2d, (0, pc, 0, pr))
        tiles = x2d.reshape(t1 - t0, self.side_r, self.tiles_c, self.side_c).permute(0, 2, 1, 3)
        return tiles.reshape((t1 - t0) * self.tiles_c, self.chunk_numel)

    def block_from_chunks(self, buf: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """The rows (× cols) of tile-rows [t0, t1) held by their chunks (padding dropped)."""
        n = t1 - t0
        tiles = buf.reshape(n, self.tiles_c, self.side_r, self.side_c).permute(0, 2, 1, 3)
        full = tiles.reshape(n * self.side_r, self.tiles_c * self.side_c)
        lo, hi = self.block_rows(t0, t1)
        return full[: hi - lo, : self.cols]

    def block_pad_index(self, t0: int, t1: int) -> torch.Tensor | None:
        """Flat padding positions within the chunks of tile-rows [t0, t1), or None."""
        if self.pad_mask is None:
            return None
        mask = self.pad_mask[t0 * self.tiles_c: t1 * self.tiles_c]
        return mask.reshape(-1).nonzero().squeeze(1) if bool(mask.any()) else None


def make_layout(shape: tuple[int, ...] | torch.Size, cfg: SparseLoCoConfig) -> TensorLayout:
    """The layout of a tensor of this shape under this config (pure; every node agrees on it)."""
    shape = tuple(int(d) for d in shape)
    numel = math.prod(shape)
    rank_ok = len(shape) >= 2 or (len(shape) == 1 and cfg.sparse_1d)
    if not rank_ok or numel < cfg.min_sparse_numel:
        return TensorLayout(shape=shape, sparse=False)
    rows, cols = (shape[0], numel // shape[0]) if len(shape) >= 2 else (1, numel)
    area = cfg.chunk_size * cfg.chunk_size
    tiles_r, side_r = _split(rows, cfg.chunk_size)
    tiles_c, side_c = _split(cols, max(1, area // side_r))
    last_r = rows - (tiles_r - 1) * side_r
    last_c = cols - (tiles_c - 1) * side_c
    k = round(cfg.topk * side_r * side_c / area)
    k = max(1, min(k, last_r * last_c))  # never more than the real values of the smallest chunk
    return TensorLayout(shape, True, rows, cols, side_r, side_c, tiles_r, tiles_c, k)
