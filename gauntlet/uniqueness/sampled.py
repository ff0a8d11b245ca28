"""Copy detection on a secret sample of chunks, read straight from encoded messages.

Comparing every kept value of every peer costs memory and time in peers × parameters (256 peers of a
1B-parameter model keep 4·10⁹ values). Instead the validator draws ``n`` chunks at random — from its
secret and the window, after the upload slot has closed, so no peer can know which chunks count —
and reads, from each stored message, only the bytes of those chunks: their packed indices, their
packed codes and the tensors' lookup tables. Offsets inside a valid message are canonical (fixed by
the run's shapes and codec), so the byte positions are computed once per window and each peer costs
one vectorised gather. :func:`gauntlet.uniqueness.copying.pair_stats` then compares the samples.

**Estimator and its error.** For a pair of peers the sampled overlap is the mean, over the sampled
chunks, of the fraction of kept positions both selected (every chunk keeps ``k`` values; chunks of a
run differ in ``k`` only by rounding). Per-chunk fractions lie in [0, 1] and the chunks are drawn
without replacement, so the Chernoff–Hoeffding bound in its relative-entropy form holds whatever the
correlation inside a chunk: a pair whose true overlap is ``p`` is seen on the other side of a
threshold ``t`` with probability at most ``exp(−n · KL(t ‖ p))``. :func:`misclassification_bound`
gives the worse of the two sides for pairs at distance ``margin`` from ``t``. With the default
``n = 768`` and a margin of 0.1 the bound is 1.9·10⁻⁷ at t = 0.4 and 0.6 and 1.6·10⁻⁷ at t = 0.5
(below 10⁻⁶ from n = 687; :func:`chunks_needed`); n = 1024 would give 1.1·10⁻⁹. When a run has
no more chunks than ``n``, every chunk is read and the result equals the full comparison exactly.
The value-similarity rule (overlap ≥ t/2 and cosine ≥ 0.95) uses the cosine on the sampled shared
positions; it has no closed-form bound (docs/validator.md shows what the tests catch).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import InvalidMessage
from gauntlet.sparseloco.chunking import make_layout
from gauntlet.sparseloco.wire import part_offsets


@dataclass(frozen=True)
class ChunkSample:
    """The sampled chunks of one window, as byte positions inside any message of the run."""

    chunks: int  # chunks sampled
    total_chunks: int  # chunks in the model's sparse tensors
    key_base: torch.Tensor  # (K,) int64: global position of each sampled kept value's chunk start
    positions: np.ndarray  # (2K + K + T·4L,) int64 byte offsets from the data start: idx lo/hi, codes, lookups
    idx_shift: np.ndarray  # (K,) bit offset of each index in its first byte
    idx_mask: np.ndarray  # (K,) 0xFFF or 0xFFFF
    code_shift: np.ndarray  # (K,)
    code_mask: int
    lookup_row: np.ndarray  # (K,) which sampled tensor's lookup table a value uses
    tensors: int  # T: sparse tensors with at least one sampled chunk
    levels: int  # L: entries of a lookup table

    @property
    def kept(self) -> int:
        return int(self.key_base.numel())

    @property
    def span(self) -> int:
        """Bytes after the data start a message must have for every position to exist."""
        return int(self.positions.max()) + 1 if self.positions.size else 0


def sample_seed(secret: bytes, window: int) -> int:
    """The sample's seed: only the holder of ``secret`` can know it before evaluating ``window``."""
    return int.from_bytes(hashlib.sha256(secret + b"|copy-sample|" + str(window).encode()).digest()[:8], "big") >> 1


def draw_sample(spec: Mapping[str, tuple[int, ...]], codec: SparseLoCoConfig, chunks: int, seed: int) -> ChunkSample:
    """``chunks`` distinct chunks of the sparse tensors (all of them when ``chunks`` is 0 or at least
    their number), and where their bytes lie. Cost O(sampled values), once per window."""
    offsets = part_offsets(spec, codec)
    names = [n for n in sorted(spec) if make_layout(tuple(spec[n]), codec).sparse]
    lays = [make_layout(tuple(spec[n]), codec) for n in names]
    levels = 1 << codec.quant_bits
    if not lays:
        empty = np.zeros(0, dtype=np.int64)
        return ChunkSample(0, 0, torch.zeros(0, dtype=torch.int64), empty, empty, empty, empty, levels - 1,
                           empty, 0, levels)
    counts = torch.tensor([lay.num_chunks for lay in lays])
    starts = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    n = total if chunks <= 0 or chunks >= total else chunks
    g = torch.Generator().manual_seed(seed)
    drawn = torch.arange(total) if n == total else torch.randperm(total, generator=g)[:n].sort().values
    t = torch.searchsorted(starts, drawn, right=True) - 1  # which tensor each sampled chunk is in
    c = drawn - starts[t]  # its chunk number inside the tensor
    k = torch.tensor([lay.k for lay in lays])[t]
    numel = torch.tensor([lay.chunk_numel for lay in lays])
    bits = torch.tensor([lay.index_bits for lay in lays])[t]
    key_offset = torch.cumsum(counts * numel, 0) - counts * numel  # copy_stats's global position of a tensor
    idx_off = torch.tensor([offsets[f"{n}::idx"][0] for n in names])[t]
    code_off = torch.tensor([offsets[f"{n}::codes"][0] for n in names])[t]

    rep = lambda x: x.repeat_interleave(k)  # noqa: E731 - one entry per kept value of each sampled chunk
    first = torch.cumsum(k, 0) - k
    j = torch.arange(int(k.sum())) - rep(first)  # value number inside its chunk
    v = rep(c) * rep(k) + j  # value number inside its tensor
    idx_bit, code_bit = v * rep(bits), v * codec.quant_bits
    idx_byte = rep(idx_off) + idx_bit // 8
    code_byte = rep(code_off) + code_bit // 8
    used, row = torch.unique(t, return_inverse=True)
    lookup_off = torch.tensor([offsets[f"{n}::lookup"][0] for n in names])[used]
    lookup_pos = (lookup_off[:, None] + torch.arange(4 * levels)).reshape(-1)
    positions = torch.cat([idx_byte, idx_byte + 1, code_byte, lookup_pos])
    return ChunkSample(
        chunks=n, total_chunks=total, key_base=key_offset[t].repeat_interleave(k) + rep(c * numel[t]),
        positions=positions.numpy(), idx_shift=(idx_bit % 8).numpy(), idx_mask=((1 << rep(bits)) - 1).numpy(),
        code_shift=(code_bit % 8).numpy(), code_mask=levels - 1, lookup_row=rep(row).numpy(),
        tensors=int(used.numel()), levels=levels)


def read_sample(data, start: int, sample: ChunkSample) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keys, values)`` of the sampled chunks of one message whose data section begins at byte
    ``start`` of ``data`` (bytes, bytearray, memoryview or mmap of a message that passed validation).
    Reads only the sampled bytes: one gather."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if start + sample.span > buf.size:
        raise InvalidMessage(f"message has {buf.size - start} data bytes; the run's layout needs {sample.span}")
    got = buf[start + sample.positions] if sample.positions.size else np.zeros(0, dtype=np.uint8)
    kept = sample.kept
    lo, hi, codes = (got[i * kept:(i + 1) * kept].astype(np.int64) for i in range(3))
    idx = ((lo | (hi << 8)) >> sample.idx_shift) & sample.idx_mask
    code = (codes >> sample.code_shift) & sample.code_mask
    lookups = got[3 * kept:].copy().view("<f4").reshape(sample.tensors, sample.levels)
    values = lookups[sample.lookup_row, code]
    return sample.key_base + torch.from_numpy(idx), torch.from_numpy(values.astype(np.float32))


def kl_bernoulli(a: float, b: float) -> float:
    """Relative entropy KL(a ‖ b) of two Bernoulli distributions (nats)."""
    def term(x: float, y: float) -> float:
        return 0.0 if x == 0 else (math.inf if y == 0 else x * math.log(x / y))
    return term(a, b) + term(1 - a, 1 - b)


def misclassification_bound(chunks: int, threshold: float, margin: float = 0.1,
                            total_chunks: int | None = None) -> float:
    """Upper bound on the probability that a pair whose true overlap is at least ``margin`` away from
    ``threshold`` lands on the wrong side of it when ``chunks`` chunks are sampled (0 when every
    chunk is read)."""
    if total_chunks is not None and chunks >= total_chunks:
        return 0.0
    sides = [p for p in (threshold - margin, threshold + margin) if 0.0 <= p <= 1.0]
    return max(math.exp(-chunks * kl_bernoulli(threshold, p)) for p in sides) if sides else 0.0


def chunks_needed(threshold: float, margin: float = 0.1, error: float = 1e-6) -> int:
    """The smallest sample whose :func:`misclassification_bound` is at most ``error``."""
    sides = [p for p in (threshold - margin, threshold + margin) if 0.0 <= p <= 1.0]
    rate = min(kl_bernoulli(threshold, p) for p in sides)
    return math.ceil(math.log(1 / error) / rate)
