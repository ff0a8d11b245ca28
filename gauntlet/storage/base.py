"""The object store interface every backend implements."""

from __future__ import annotations

from pathlib import Path

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gauntlet.errors import StorageError

_KEY = re.compile(r"[A-Za-z0-9._=-]+(/[A-Za-z0-9._=-]+)*")


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about an object. ``last_modified`` is the store's clock (unix seconds)."""

    key: str
    size: int
    last_modified: float


class ObjectStore(Protocol):
    """A flat key → bytes store. Keys are ``/``-separated paths of ``[A-Za-z0-9._=-]`` segments.

    - ``put`` is atomic: readers see the old object or the new one, never a mix.
    - ``get`` refuses objects larger than ``max_bytes`` (checked before the body is transferred,
      and enforced while streaming) with :class:`~gauntlet.errors.ObjectTooLarge`; a missing
      object raises :class:`~gauntlet.errors.ObjectNotFound`.
    - ``head`` returns None for a missing object; ``list`` returns objects under a prefix in key
      order; ``delete`` of a missing object is not an error; ``delete_many`` deletes many keys in
      as few requests as the backend allows (S3: 1,000 a request).
    - Writes through a read-only store raise :class:`~gauntlet.errors.AccessDenied`.
    """

    url: str
    read_only: bool
    time_resolution: float  # seconds: S3 reports LastModified truncated to whole seconds

    def put(self, key: str, data: bytes) -> None: ...

    def put_file(self, key: str, path: Path) -> None:
        """Like ``put`` with the bytes of a local file, read as they are sent (large objects)."""
        ...

    def get(self, key: str, max_bytes: int | None = None) -> bytes: ...

    def get_file(self, key: str, path: Path, max_bytes: int | None = None) -> "ObjectInfo":
        """Like ``get``, into the local file ``path`` instead of memory (large objects: checkpoints)."""
        ...

    def read(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        """Like ``get``, plus the size and last-modified time *of the bytes returned* (not of
        whatever the key holds a moment later)."""
        ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Sequence[str]) -> None: ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe object key, else raise StorageError."""
    if not isinstance(key, str) or len(key) > 1024 or not _KEY.fullmatch(key):
        raise StorageError(f"invalid object key {key!r}: use /-separated segments of A-Z a-z 0-9 . _ = -")
    if any(part in (".", "..") for part in key.split("/")):
        raise StorageError(f"invalid object key {key!r}: '.' and '..' segments are not allowed")
    return key
