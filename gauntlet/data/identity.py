"""The identity of a run's data: a checksum of exactly the token sequences a node trains and validates on.

Two nodes agree on the data when their identities are equal, whatever the files look like on their
disks (a prepared folder, nanoGPT ``.bin`` files, ``.npy`` arrays, another path):

    sha256( b"gauntlet-data-v1"
            | for the training split, then the validation split:
                  sequences, seq_len (two little-endian uint64)
                  | every token of the split's sequences in order, as little-endian uint32 )

A run's manifest pins it as ``data.sha256``. Hashing reads every token once (O(block) memory); the
result is cached by the files' paths, sizes and modification times, so a node pays it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)
VERSION = b"gauntlet-data-v1"


class Split(Protocol):
    seq_len: int

    def __len__(self) -> int: ...

    def token_blocks(self) -> Iterator[np.ndarray]:
        """The split's tokens, in order, as 1-D arrays."""
        ...

    def source_files(self) -> list[Path]: ...


def data_identity(train: Split, val: Split) -> str:
    """The sha256 (64 hex digits) of the two splits' token sequences, as the module docstring defines it."""
    digest = hashlib.sha256(VERSION)
    for split in (train, val):
        digest.update(struct.pack("<QQ", len(split), split.seq_len))
        for block in split.token_blocks():
            digest.update(np.ascontiguousarray(block, dtype="<u4").tobytes())
    return digest.hexdigest()


def _stamp(files: Iterable[Path], train: Split, val: Split) -> str:
    parts = [f"{len(train)}:{len(val)}:{train.seq_len}"]
    for path in sorted({Path(p).resolve() for p in files}):
        st = path.stat()
        parts.append(f"{path}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cached_identity(train: Split, val: Split, cache_root: str | Path) -> str:
    """:func:`data_identity`, remembered under ``cache_root/identities`` for files that did not change."""
    stamp = _stamp(train.source_files() + val.source_files(), train, val)
    cache = Path(cache_root) / "identities" / f"{stamp}.json"
    try:
        return json.loads(cache.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    log.info("computing the data's identity (%d + %d sequences of %d tokens)", len(train), len(val), train.seq_len)
    found = data_identity(train, val)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": found}))
    os.replace(tmp, cache)
    return found
