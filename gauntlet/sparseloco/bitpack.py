"""Vectorised bit packing: n-bit codes and 12/16-bit indices into little-endian bytes.

Every function is exact and platform independent (bytes are assembled with shifts, never by
reinterpreting native integers). Unused bits of the last byte are zero; the decoder checks it.
"""

from __future__ import annotations

import torch


def packed_len(count: int, bits: int) -> int:
    """Bytes needed for ``count`` values of ``bits`` bits each."""
    return -(-count * bits // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes < 2**bits (bits in 1, 2, 4, 8) into uint8, first value in the low bits."""
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    per = 8 // bits
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.view(-1, per)
    out = groups[:, 0].clone()
    for j in range(1, per):  # ≤ 7 whole-tensor ops, not a loop over values
        out |= groups[:, j] << (j * bits)
    return out


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``count`` uint8 codes."""
    if bits == 8:
        return packed[:count]
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(1) >> shifts) & ((1 << bits) - 1)).view(-1)[:count]


def codes_padding_ok(packed: torch.Tensor, bits: int, count: int) -> bool:
    """True when the unused high bits of the last byte are zero."""
    used = (count * bits) % 8
    return used == 0 or int(packed[-1]) >> used == 0


def pack_indices(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack indices < 2**bits into 12-bit (two per three bytes) or 16-bit little-endian fields."""
    flat = idx.reshape(-1).to(torch.int32)
    if bits == 16:
        return torch.stack([flat & 0xFF, flat >> 8], dim=1).to(torch.uint8).view(-1)
    if bits != 12:
        raise ValueError(f"index width must be 12 or 16 bits, not {bits}")
    count = flat.numel()
    if count % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    a, b = flat[0::2], flat[1::2]
    out = torch.stack([a & 0xFF, (a >> 8) | ((b & 0xF) << 4), b >> 4], dim=1)
    return out.to(torch.uint8).view(-1)[: packed_len(count, 12)]


def unpack_indices(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_indices`: ``count`` int64 indices."""
    p = packed.to(torch.int64)
    if bits == 16:
        p = p.view(-1, 2)
        return (p[:, 0] | (p[:, 1] << 8))[:count]
    if p.numel() % 3:
        p = torch.cat([p, p.new_zeros(3 - p.numel() % 3)])
    p = p.view(-1, 3)
    a = p[:, 0] | ((p[:, 1] & 0xF) << 8)
    b = (p[:, 1] >> 4) | (p[:, 2] << 4)
    return torch.stack([a, b], dim=1).view(-1)[:count]


def index_padding_ok(packed: torch.Tensor, bits: int, count: int) -> bool:
    """True when the 4 filler bits after an odd number of 12-bit indices are zero."""
    if bits != 12 or count % 2 == 0:
        return True
    return int(packed[-1]) >> 4 == 0
