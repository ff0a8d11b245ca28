"""Uniform quantisation with a per-bin-mean lookup table (docs/protocol.md §2.6).

The kept values of one tensor are coded on ``bits`` bits. Bins are uniform, ``width = range_sigmas
* σ / 2**bits`` wide, symmetric about the mean μ of the values (so the code boundary at μ preserves
the sign of values around zero); values beyond the range fall into the outer bins. The decoder does
not use bin centres: it reads each bin's *mean* of the values that fell into it from the lookup
table sent with the message, which removes the bias of wide bins. Empty bins get their centre, so
every code decodes to a finite value.
"""

from __future__ import annotations

import torch

from gauntlet.errors import CodecError


def quantize(values: torch.Tensor, bits: int, range_sigmas: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Code ``values`` (any shape) → (uint8 codes of the same shape, float32 lookup of 2**bits)."""
    v = values.reshape(-1).float()
    n_bins = 1 << bits
    if v.numel() == 0:
        return values.new_zeros(values.shape, dtype=torch.uint8), torch.zeros(n_bins)
    mean = v.mean()
    std = (v - mean).square().mean().sqrt()
    if not torch.isfinite(std):
        raise CodecError("cannot quantise non-finite values: the pseudo-gradient holds NaN or Inf")
    width = range_sigmas * std / n_bins
    width = torch.where(width > 0, width, torch.ones_like(width))
    codes = torch.floor((v - mean) / width + n_bins / 2).clamp_(0, n_bins - 1).to(torch.uint8)
    counts = torch.bincount(codes, minlength=n_bins).float()
    sums = torch.bincount(codes, weights=v, minlength=n_bins).float()
    centres = mean + (torch.arange(n_bins, device=v.device) - n_bins / 2 + 0.5) * width
    lookup = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return codes.view(values.shape), lookup.float()


def dequantize(codes: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """float32 values of the codes (same shape as codes)."""
    return lookup[codes.long()]
