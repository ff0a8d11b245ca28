"""The embedded object store: a directory on the local file system.

Writes go to a uniquely named temporary file in the target directory, are flushed to disk and then
renamed over the target (``os.replace``), so several processes can read and write the same store
at once and a reader never sees a partial object. ``last_modified`` is the file's mtime.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from gauntlet.errors import AccessDenied, ObjectNotFound, ObjectTooLarge, StorageError
from gauntlet.storage.base import ObjectInfo, check_key

_TMP_SUFFIX = ".partial"


class FileStore:
    """``clock``, for simulations on a virtual clock: stamps each written object's last-modified time
    with ``clock()`` instead of the file system's time."""

    time_resolution = 0.0

    def __init__(self, root: str | Path, read_only: bool = False, clock: Callable[[], float] | None = None) -> None:
        self.root = Path(root).resolve()
        self.read_only = read_only
        self.clock = clock
        self.url = self.root.as_uri()
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _writable(self) -> None:
        if self.read_only:
            raise AccessDenied(f"{self.url} is opened read-only")

    def put(self, key: str, data: bytes) -> None:
        self._store(key, lambda fh: fh.write(data))

    def put_file(self, key: str, source: Path) -> None:
        self._store(key, lambda fh: _copy_from(source, fh))

    def _store(self, key: str, write) -> None:
        """Write through ``write(file)`` to a temporary file, fsync it, rename it over the key."""
        self._writable()
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            if self.clock is not None:
                stamp = self.clock()
                os.utime(tmp, (stamp, stamp))
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"cannot write {key} in {self.url}: {exc.strerror or exc}") from exc

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return self.read(key, max_bytes)[0]

    def read(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        got: list[bytes] = []

        def take(fh) -> int:
            got.append(fh.read() if max_bytes is None else fh.read(max_bytes + 1))
            return len(got[0])

        size, mtime = self._consume(key, max_bytes, take)
        return got[0], ObjectInfo(key, size, mtime)

    def get_file(self, key: str, path: Path, max_bytes: int | None = None) -> ObjectInfo:
        def copy(fh) -> int:
            try:
                with open(path, "wb") as out:
                    shutil.copyfileobj(fh, out, 16 << 20)
                    return out.tell()
            except OSError as exc:  # the local side: not the object's fault
                raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None

        return ObjectInfo(key, *self._consume(key, max_bytes, copy))

    def _consume(self, key: str, max_bytes: int | None, consume) -> tuple[int, float]:
        """Open the object, refuse it when it is over ``max_bytes``, and hand the open file to
        ``consume(file) -> bytes taken``; returns (bytes taken, the object's modification time)."""
        try:
            with open(self._path(key), "rb") as fh:
                st = os.fstat(fh.fileno())  # the inode we read: a later os.replace does not change it
                if max_bytes is not None and st.st_size > max_bytes:
                    raise ObjectTooLarge(f"{key} is {st.st_size} bytes, over the {max_bytes}-byte limit")
                taken = consume(fh)
        except FileNotFoundError:
            raise ObjectNotFound(f"{key} does not exist in {self.url}") from None
        except IsADirectoryError:
            raise ObjectNotFound(f"{key} is a prefix, not an object, in {self.url}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {key} from {self.url}: {exc.strerror or exc}") from exc
        if max_bytes is not None and taken > max_bytes:
            raise ObjectTooLarge(f"{key} grew over the {max_bytes}-byte limit while being read")
        return taken, st.st_mtime

    def head(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        if not self._path(key).is_file():
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        out: list[ObjectInfo] = []
        if not base.is_dir():
            return out
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.endswith(_TMP_SUFFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    try:
                        st = full.stat()
                    except FileNotFoundError:  # deleted meanwhile
                        continue
                    out.append(ObjectInfo(key, st.st_size, st.st_mtime))
        return sorted(out, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        self._writable()
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {key} from {self.url}: {exc.strerror or exc}") from exc

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete each key (one unlink each: a file system has no batch)."""
        for key in keys:
            self.delete(key)


def _copy_from(source: Path, fh) -> None:
    with open(source, "rb") as src:
        shutil.copyfileobj(src, fh, 16 << 20)
