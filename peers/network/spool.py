"""Validated messages kept on local disk instead of in memory.

A validator gathers every peer's message each window: 256 peers of a 1B-parameter model send about
7 GB. Once a message has passed every check (signature included) its bytes are written to a spool
directory (atomically) and only its header stays in memory; the loss test and the aggregation decode
one peer at a time from the file, and copy detection reads only the sampled chunks' bytes
(:mod:`gauntlet.uniqueness.sampled`). A spooled file is re-checked against the payload hash its
signed header carries whenever it is decoded, so a damaged disk cannot slip in other bytes.
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import InvalidMessage
from gauntlet.sparseloco.compress import CompressedTensor
from gauntlet.sparseloco.wire import HeaderFields, Message, MessageHeader, decode_message
from gauntlet.uniqueness.sampled import ChunkSample, read_sample


def data_start(raw) -> int:
    """Where the data section of a (validated) message begins: after the 8-byte length and the header."""
    return 8 + struct.unpack_from("<Q", raw, 0)[0]


@dataclass(frozen=True)
class SpooledMessage(HeaderFields):
    """A validated message whose bytes live in ``path``; reads like a :class:`Message`."""

    header: MessageHeader
    digest: bytes
    signature: bytes | None
    nbytes: int
    path: Path
    start: int  # data section offset
    spec: Mapping[str, tuple[int, ...]] = field(repr=False)
    codec: SparseLoCoConfig = field(repr=False)

    @property
    def raw(self) -> bytearray:
        """The message's bytes (read from disk each time)."""
        with open(self.path, "rb") as fh:
            return bytearray(fh.read())

    @property
    def tensors(self) -> dict[str, CompressedTensor]:
        """The decoded tensors, decoded anew on each access (nothing is cached)."""
        message = decode_message(self.raw, spec=self.spec, expected_codec=self.codec, require_signature=False,
                                 verify=lambda *_: True)
        if message.header.payload_sha256 != self.header.payload_sha256 or message.digest != self.digest:
            raise InvalidMessage(f"spooled message {self.path} differs from the one validated")
        return message.tensors

    @contextmanager
    def mapped(self) -> Iterator[mmap.mmap]:
        """The bytes memory-mapped read-only: only the pages read are loaded."""
        with open(self.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            yield mm


class Spool:
    """One directory per window under ``root``; :meth:`keep_only` deletes the others."""

    def __init__(self, root: Path, spec: Mapping[str, tuple[int, ...] | torch.Size], codec: SparseLoCoConfig) -> None:
        self.root = Path(root)
        self.spec = {n: tuple(int(d) for d in s) for n, s in spec.items()}
        self.codec = codec

    def put(self, message: Message) -> SpooledMessage:
        """Write a validated message's bytes (atomically) and return its on-disk stand-in."""
        folder = self.root / str(message.window)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{message.hotkey}.msg"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(message.raw)
        os.replace(tmp, path)
        return SpooledMessage(message.header, message.digest, message.signature, message.nbytes, path,
                              data_start(message.raw), self.spec, self.codec)

    def keep_only(self, window: int | None) -> None:
        """Delete every window's folder but ``window``'s (all of them with None)."""
        if not self.root.exists():
            return
        for child in self.root.iterdir():
            if child.name != str(window):
                shutil.rmtree(child, ignore_errors=True)


def read_message_sample(message: Message | SpooledMessage, sample: ChunkSample) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gauntlet.uniqueness.sampled.read_sample` of a gathered message, in memory or on disk."""
    if isinstance(message, SpooledMessage):
        with message.mapped() as mm:
            return read_sample(mm, message.start, sample)
    return read_sample(message.raw, data_start(message.raw), sample)
