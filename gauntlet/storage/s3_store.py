"""S3-compatible object storage through boto3 (AWS, Cloudflare R2, MinIO, SeaweedFS, ...).

Retry policy (botocore's own retries are off so that this is the only one): server errors (5xx),
throttling, timeouts and dropped connections are retried up to ``max_attempts`` times with
exponential back-off; client errors (4xx) are never retried — a 403 or 404 will not change.
``get`` asks HEAD for the size first and refuses an object over ``max_bytes`` before any of its
body is transferred, then enforces the limit again while streaming (a server may lie). Uploads of
``multipart_threshold`` bytes or more go up in parts, each retried on its own.

Integrity: every upload carries the SHA-256 of its bytes as user metadata (``x-amz-meta-sha256``)
and every read checks it. Bytes that do not match — a body cut short or swapped for another
object's by a proxy, cache or faulty server — are retried like any transient fault and end in a
:class:`StorageError` (the infrastructure's fault), never in bytes handed to the decoder as if the
sender had written them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    FlexibleChecksumError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from gauntlet.errors import AccessDenied, ObjectNotFound, ObjectTooLarge, StorageError
from gauntlet.storage.base import ObjectInfo, check_key

T = TypeVar("T")
_TRANSIENT_NETWORK = (
    EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
    IncompleteReadError, ResponseStreamingError,
    FlexibleChecksumError,  # the server's own checksum header disagrees with the body received
)
_TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
_STREAM_CHUNK = 1 << 20
DELETE_BATCH = 1000  # keys per DeleteObjects request (the S3 limit)


class _Transient(Exception):
    """Internal marker: this attempt may succeed if repeated."""


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
        backoff_s: float = 0.2,
        multipart_threshold: int = 64 << 20,
        multipart_chunksize: int = 16 << 20,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.region = region
        self.read_only = read_only
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        query = "&".join(f"{k}={v}" for k, v in (("endpoint_url", endpoint_url), ("region", region)) if v)
        self.url = f"s3://{bucket}" + (f"?{query}" if query else "")
        session = boto3.session.Session(
            aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None, region_name=region or None
        )
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},  # no hidden retries: ours are below
            s3={"addressing_style": "path"} if endpoint_url else None,
            signature_version="s3v4",
        )
        self.client = session.client("s3", endpoint_url=endpoint_url, config=config)

    # ---------------------------------------------------------------------------------- plumbing

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one S3 operation under the retry policy, translating errors to StorageError types."""
        for attempt in range(self.max_attempts):
            try:
                return fn()
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                code = exc.response.get("Error", {}).get("Code", "")
                if status >= 500 or code in _TRANSIENT_CODES:
                    last: Exception = exc
                elif status == 404 or code in ("NoSuchKey", "NoSuchBucket", "NotFound", "404"):
                    raise ObjectNotFound(f"{what}: not found in {self.url}") from None
                elif status == 403 or code in ("AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
                    raise AccessDenied(f"{what}: access denied by {self.url} ({code})") from None
                else:
                    raise StorageError(f"{what}: {self.url} answered {status} {code}") from None
            except (_TRANSIENT_NETWORK + (_Transient,)) as exc:
                last = exc
            except BotoCoreError as exc:
                raise StorageError(f"{what}: {exc}") from None
            if attempt + 1 < self.max_attempts:
                time.sleep(self.backoff_s * 2**attempt)
        raise StorageError(f"{what}: {self.url} failed {self.max_attempts} times; last error: {last}") from last

    def _writable(self) -> None:
        if self.read_only:
            raise AccessDenied(f"{self.url} is opened read-only")

    # --------------------------------------------------------------------------------- interface

    def put(self, key: str, data: bytes) -> None:
        self._writable()
        check_key(key)
        if len(data) >= self.multipart_threshold:
            self._put_multipart(key, data)
            return
        digest = hashlib.sha256(data).hexdigest()
        self._call(f"put {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data,
                                                                 Metadata={"sha256": digest}))

    def _put_multipart(self, key: str, data: bytes) -> None:
        upload = self._call(f"start upload of {key}",
                            lambda: self.client.create_multipart_upload(
                                Bucket=self.bucket, Key=key, Metadata={"sha256": hashlib.sha256(data).hexdigest()}))
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(data), self.multipart_chunksize), start=1):
                body = data[start : start + self.multipart_chunksize]
                part = self._call(f"upload part {number} of {key}", lambda b=body, n=number: self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=b))
                parts.append({"PartNumber": number, "ETag": part["ETag"]})
            self._call(f"complete upload of {key}", lambda: self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}))
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (ClientError, BotoCoreError):
                pass  # the bucket's lifecycle rules clean up what an abort cannot
            raise

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        return self.read(key, max_bytes)[0]

    def read(self, key: str, max_bytes: int | None = None) -> tuple[bytes, ObjectInfo]:
        check_key(key)
        if max_bytes is not None:
            info = self.head(key)
            if info is None:
                raise ObjectNotFound(f"{key} does not exist in {self.url}")
            if info.size > max_bytes:
                raise ObjectTooLarge(f"{key} is {info.size} bytes, over the {max_bytes}-byte limit")

        def fetch() -> tuple[bytes, ObjectInfo]:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body = response["Body"]
            chunks, total = [], 0
            try:
                while chunk := body.read(_STREAM_CHUNK):
                    total += len(chunk)
                    if max_bytes is not None and total > max_bytes:
                        raise ObjectTooLarge(f"{key} streamed past the {max_bytes}-byte limit")
                    chunks.append(chunk)
            finally:
                body.close()
            data = b"".join(chunks)
            expected = (response.get("Metadata") or {}).get("sha256")
            if expected is not None and hashlib.sha256(data).hexdigest() != expected:
                raise _Transient(f"the bytes of {key} do not match their SHA-256 (cut short or swapped in transit)")
            return data, ObjectInfo(key, len(data), response["LastModified"].timestamp())

        return self._call(f"get {key}", fetch)

    def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            meta: dict[str, Any] = self._call(
                f"head {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=key))
        except ObjectNotFound:
            return None
        return ObjectInfo(key, int(meta["ContentLength"]), meta["LastModified"].timestamp())

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
