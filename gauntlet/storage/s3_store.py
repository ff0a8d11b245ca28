"""S3-compatible object storage through boto3 (AWS, Cloudflare R2, MinIO, SeaweedFS, ...).

Retries are botocore's own: the ``standard`` retry mode (or ``adaptive``, which also slows the client
down when the server throttles) retries server errors (5xx), throttling, timeouts and dropped
connections up to ``max_attempts`` attempts in all, after exponentially growing, randomly jittered
pauses; client errors (4xx) are never retried — a 403 or 404 will not change. Objects of
``multipart_threshold`` bytes or more travel through boto3's managed transfers: parts uploaded, and
byte ranges downloaded, ``max_concurrency`` at a time, each request retried on its own. ``get`` asks
HEAD for the size first and refuses an object over ``max_bytes`` before any of its body is
transferred, then enforces the limit again while receiving (a server may lie).

Integrity: every upload carries the SHA-256 of its bytes as user metadata (``x-amz-meta-sha256``)
and every read checks it. Bytes that do not match, or a body cut short — a proxy, cache or faulty
server — are read again (up to ``max_attempts`` reads, jittered pauses between them) and end in a
:class:`StorageError` (the infrastructure's fault), never in bytes handed to the decoder as if the
sender had written them.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.exceptions import RetriesExceededError

from gauntlet.errors import AccessDenied, ConfigError, ObjectNotFound, ObjectTooLarge, StorageError
from gauntlet.storage.base import ObjectInfo, check_key

T = TypeVar("T")
_SPOILED_BODY = (  # a body that broke off, stalled or disagrees with its checksum: read it again
    IncompleteReadError, ResponseStreamingError, ReadTimeoutError, FlexibleChecksumError,
)
_STREAM_CHUNK = 1 << 20
DELETE_BATCH = 1000  # keys per DeleteObjects request (the S3 limit)
RETRY_MODES = ("standard", "adaptive")


class _Spoiled(Exception):
    """Internal marker: the body received is not the object's bytes; reading again may help."""


class _Bounded(io.RawIOBase):
    """A preallocated, seekable buffer for a managed download that refuses to grow past its size
    (the size HEAD announced, itself within ``max_bytes``)."""

    def __init__(self, size: int, key: str) -> None:
        super().__init__()
        self.data, self.key, self.pos = bytearray(size), key, 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = offset if whence == io.SEEK_SET else self.pos + offset if whence == io.SEEK_CUR \
            else len(self.data) + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, chunk) -> int:
        end = self.pos + len(chunk)
        if end > len(self.data):
            raise ObjectTooLarge(f"{self.key} streamed past the {len(self.data)} bytes its HEAD announced")
        self.data[self.pos:end] = chunk
        self.pos = end
        return len(chunk)


class S3Store:
    time_resolution = 1.0  # LastModified is an HTTP date: whole seconds

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        read_only: bool = False,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 4,
        retry_mode: str = "standard",
        backoff_s: float = 1.0,
        multipart_threshold: int = 64 << 20,
        multipart_chunksize: int = 16 << 20,
        max_concurrency: int = 8,
    ) -> None:
        if retry_mode not in RETRY_MODES:
            raise ConfigError(f"retry_mode={retry_mode!r}: use one of {', '.join(RETRY_MODES)}")
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.read_only = read_only
        self.max_attempts = max(1, int(max_attempts))
        self.backoff_s = backoff_s  # base of the jittered pause before reading a spoiled body again
        self.multipart_threshold = multipart_threshold
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize,
                                       max_concurrency=max(1, int(max_concurrency)), use_threads=max_concurrency > 1)
        query = "&".join(f"{k}={v}" for k, v in (("endpoint_url", endpoint_url), ("region", region)) if v)
        self.url = f"s3://{bucket}" + (f"?{query}" if query else "")
        session = boto3.session.Session(
            aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None, region_name=region or None
        )
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": self.max_attempts, "mode": retry_mode},
            max_pool_connections=max(10, int(max_concurrency)),
            s3={"addressing_style": "path"} if endpoint_url else None,
            signature_version="s3v4",
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)

    # ---------------------------------------------------------------------------------- plumbing

    def _error(self, what: str, exc: Exception) -> StorageError:
        """The typed error for what botocore (after its retries) or a managed transfer raised."""
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            exc = exc.__context__
        if isinstance(exc, ClientError):
            meta = exc.response.get("ResponseMetadata", {})
            status, code = meta.get("HTTPStatusCode", 0), exc.response.get("Error", {}).get("Code", "")
            if status == 404 or code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404"):
                return ObjectNotFound(f"{what}: not found in {self.url}")
            if status == 403 or code in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
                return AccessDenied(f"{what}: access denied by {self.url} ({code})")
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                attempts = meta.get("RetryAttempts", 0) + 1
                return StorageError(f"{what}: {self.url} failed {attempts} times; last error: {status} {code}")
            return StorageError(f"{what}: {self.url} answered {status} {code}")
        if isinstance(exc, (BotoCoreError, RetriesExceededError, S3UploadFailedError)):
            return StorageError(f"{what}: {self.url} failed {self.max_attempts} times; last error: {exc}")
        return StorageError(f"{what}: {exc}")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """One S3 operation (botocore retries transient faults itself), its errors typed."""
        try:
            return fn()
        except (ClientError, BotoCoreError, RetriesExceededError, S3UploadFailedError) as exc:
            raise self._error(what, exc) from None

    def _writable(self) -> None:
        if self.read_only:
            raise AccessDenied(f"{self.url} is opened read-only")

    # --------------------------------------------------------------------------------- interface

    def put(self, key: str, data: bytes) -> None:
        self._writable()
        check_key(key)
        digest = hashlib.sha256(data).hexdigest()
        if len(data) >= self.multipart_threshold:  # parts in parallel, each retried on its own
            self._call(f"upload {key}", lambda: self.client.upload_fileobj(
                io.BytesIO(data), self.bucket, key, ExtraArgs={"Metadata": {"sha256": digest}}, Config=self.transfer))
            return
        self._call(f"put {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                                                 Metadata={"sha256": digest}))

    def put_file(self, key: str, path: Path) -> None:
        """A local file through boto3's managed upload (parts in parallel above the threshold), its
        SHA-256 computed by reading it once."""
        self._writable()
        check_key(key)
        self._call(f"upload {key}", lambda: self.client.upload_file(
            str(path), self.bucket, key, ExtraArgs={"Metadata": {"sha256": _file_sha256(path)}}, Config=self.transfer))

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return self.read(key, max_bytes)[0]

    def read(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        check_key(key)
        meta = self._head_within(key, max_bytes) if max_bytes is not None else None
        if meta is not None and int(meta["ContentLength"]) >= self.multipart_threshold:
            return self._again_when_spoiled(f"get {key}", lambda: self._download(key, meta))
        return self._again_when_spoiled(f"get {key}", lambda: self._fetch(key, max_bytes))

    def get_file(self, key: str, path: Path, max_bytes: int | None = None) -> ObjectInfo:
        """An object into a local file through boto3's managed download (byte ranges in parallel,
        each retried by the transfer), checked against its size and SHA-256; read again when the
        bytes fail them."""
        check_key(key)
        meta = self._head_within(key, max_bytes)
        return self._again_when_spoiled(f"download {key}", lambda: self._download_to(key, path, meta))

    def _head_within(self, key: str, max_bytes: int | None) -> dict[str, Any]:
        """The object's HEAD; ObjectNotFound, or ObjectTooLarge over ``max_bytes`` (before any body moves)."""
        meta = self._head(key)
        if meta is None:
            raise ObjectNotFound(f"{key} does not exist in {self.url}")
        if max_bytes is not None and int(meta["ContentLength"]) > max_bytes:
            raise ObjectTooLarge(f"{key} is {meta['ContentLength']} bytes, over the {max_bytes}-byte limit")
        return meta

    def _again_when_spoiled(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()``, tried again after a jittered pause while the bytes it got are spoiled."""
        for n in range(self.max_attempts):
            try:
                return attempt()
            except _Spoiled as exc:
                last = exc
            if n + 1 < self.max_attempts:
                time.sleep(random.random() * min(20.0, self.backoff_s * 2**n))  # full jitter
        raise StorageError(f"{what}: {self.url} failed {self.max_attempts} times; last error: {last}")

    def _download_to(self, key: str, path: Path, meta: dict[str, Any]) -> ObjectInfo:
        """One managed download into ``path``; _Spoiled when the file's size or SHA-256 is not the object's."""
        try:
            with open(path, "wb") as fh:
                self._call(f"download {key}", lambda: self._download_spoilable(key, fh))
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None
        size, expected = int(meta["ContentLength"]), (meta.get("Metadata") or {}).get("sha256")
        if Path(path).stat().st_size != size or (expected is not None and _file_sha256(path) != expected):
            raise _Spoiled(f"the bytes of {key} do not match their size or SHA-256 (cut short or swapped in transit)")
        return ObjectInfo(key, size, meta["LastModified"].timestamp())

    def _download_spoilable(self, key: str, fh) -> None:
        try:
            self.client.download_fileobj(self.bucket, key, fh, Config=self.transfer)
        except _SPOILED_BODY as exc:
            raise _Spoiled(f"the body of {key} broke off or failed its checksum: {exc}") from None

    def _fetch(self, key: str, max_bytes: int | None) -> tuple[bytes, ObjectInfo]:
        """One GET, streamed within ``max_bytes`` and checked against the object's SHA-256."""
        response = self._call(f"get {key}", lambda: self.client.get_object(Bucket=self.bucket, Key=key))
        body, chunks, total = response["Body"], [], 0
        try:
            while chunk := body.read(_STREAM_CHUNK):
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise ObjectTooLarge(f"{key} streamed past the {max_bytes}-byte limit")
                chunks.append(chunk)
        except _SPOILED_BODY as exc:
            raise _Spoiled(f"the body of {key} broke off: {exc}") from None
        finally:
            body.close()
        data = b"".join(chunks)
        self._check(key, data, response.get("Metadata"))
        return data, ObjectInfo(key, len(data), response["LastModified"].timestamp())

    def _download(self, key: str, meta: dict[str, Any]) -> tuple[bytes, ObjectInfo]:
        """A large object as byte ranges in parallel (boto3's managed download) into a buffer of the
        size HEAD announced, checked against its SHA-256. Each range is retried by the transfer itself;
        only bytes that fail the hash are read again (by :meth:`read`)."""
        sink = _Bounded(int(meta["ContentLength"]), key)
        self._call(f"download {key}", lambda: self.client.download_fileobj(self.bucket, key, sink,
                                                                            Config=self.transfer))
        data = bytes(sink.data)
        self._check(key, data, meta.get("Metadata"))
        return data, ObjectInfo(key, len(data), meta["LastModified"].timestamp())

    @staticmethod
    def _check(key: str, data: bytes, metadata: dict | None) -> None:
        expected = (metadata or {}).get("sha256")
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise _Spoiled(f"the bytes of {key} do not match their SHA-256 (cut short or swapped in transit)")

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self._call(f"head {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except ObjectNotFound:
            return None

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        meta = self._head(key)
        return None if meta is None else ObjectInfo(key, int(meta["ContentLength"]), meta["LastModified"].timestamp())

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        def run() -> list[ObjectInfo]:
            out = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    out.append(ObjectInfo(obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp()))
            return sorted(out, key=lambda o: o.key)

        return self._call(f"list {prefix or '(all)'}", run)

    def delete(self, key: str) -> None:
        self._writable()
        check_key(key)
        self._call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))

    def delete_many(self, keys: Sequence[str]) -> None:
        """Delete every key, up to 1,000 a request (``DeleteObjects``); a missing key is not an error,
        a key the server refuses to delete is a StorageError naming it."""
        self._writable()
        keys = [check_key(k) for k in keys]
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[start : start + DELETE_BATCH]]
            answer = self._call(f"delete {len(batch)} objects", lambda: self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}))
            refused = answer.get("Errors") or []
            if refused:
                first = refused[0]
                raise StorageError(f"{self.url} refused to delete {len(refused)} of {len(batch)} objects, e.g. "
                                   f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip())

    def create_bucket(self) -> None:
        """Create the bucket if it does not exist (needs a key allowed to)."""
        self._writable()
        try:
            self._call(f"check bucket {self.bucket}", lambda: self.client.head_bucket(Bucket=self.bucket))
        except ObjectNotFound:
            self._call(f"create bucket {self.bucket}", lambda: self.client.create_bucket(Bucket=self.bucket))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_STREAM_CHUNK * 16):
            digest.update(chunk)
    return digest.hexdigest()
