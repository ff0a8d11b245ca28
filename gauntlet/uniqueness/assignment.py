"""Deterministic data assignment (docs/protocol.md §5).

The sequences a peer must train on in a window are a pure function of the run seed, its hotkey and
the window, so any validator can recompute them. The hash, version 1::

    prefix = sha256("gauntlet-assign-v1|{seed}|{hotkey}|{window}")
    candidate_i = int.from_bytes(sha256(prefix + i as 8 bytes big-endian)[:8], "big") % dataset_size
    for i = 0, 1, 2, ...: keep candidate_i unless already kept, until ``count`` are kept.

Only SHA-256 and integer arithmetic: identical on every platform and library version. The
validator's "own data" sample is drawn *from the assigned set* (:func:`own_eval_indices`), so every
evaluated sequence is one the peer had to train on — unlike the reference, where only ~19 % were.
"""

from __future__ import annotations

import hashlib

_MAX_DRAWS_FACTOR = 64


def _stream(prefix: bytes, modulus: int):
    i = 0
    while True:
        digest = hashlib.sha256(prefix + i.to_bytes(8, "big")).digest()
        yield int.from_bytes(digest[:8], "big") % modulus
        i += 1


def _distinct(prefix: bytes, count: int, modulus: int) -> list[int]:
    if not 0 <= count <= modulus:
        raise ValueError(f"cannot draw {count} distinct values out of {modulus}")
    out, seen = [], set()
    for n, value in enumerate(_stream(prefix, modulus)):
        if len(out) == count:
            return out
        if n > _MAX_DRAWS_FACTOR * max(count, 1) + 64:
            raise ValueError("assignment draws exhausted; the dataset is too small for this assignment")
        if value not in seen:
            seen.add(value)
            out.append(value)
    raise AssertionError("unreachable")


def assigned_indices(seed: int, hotkey: str, window: int, count: int, dataset_size: int) -> list[int]:
    """The ``count`` distinct training-sequence indices ``hotkey`` must train on in ``window``, in order."""
    prefix = hashlib.sha256(f"gauntlet-assign-v1|{seed}|{hotkey}|{window}".encode()).digest()
    return _distinct(prefix, count, dataset_size)


def own_eval_indices(assigned: list[int], count: int, seed: int, window: int) -> list[int]:
    """A validator's sample of a peer's own data: ``count`` of the peer's assigned indices."""
    prefix = hashlib.sha256(f"gauntlet-own-eval-v1|{seed}|{window}".encode()).digest()
    return [assigned[i] for i in _distinct(prefix, min(count, len(assigned)), len(assigned))]
