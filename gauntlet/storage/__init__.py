"""Object storage: the :class:`ObjectStore` interface, a file-system store (embedded default) and
an S3 store, the key layout (:mod:`~.keys`) and bucket cards (:mod:`~.card`)."""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, urlsplit

from gauntlet.errors import ConfigError, InvalidCommitment
from gauntlet.storage.base import ObjectInfo, ObjectStore
from gauntlet.storage.card import BucketCard
from gauntlet.storage.file_store import FileStore

__all__ = ["BucketCard", "FileStore", "ObjectInfo", "ObjectStore", "check_card_endpoint", "open_store",
           "store_from_card"]

_S3_OPTIONS = {"endpoint_url", "region", "retry_mode"}


def open_store(url: str, *, access_key: str | None = None, secret_key: str | None = None,
               read_only: bool = False, **options) -> ObjectStore:
    """Open a store from a URL.

    - ``file:///absolute/dir``: the embedded store (created if missing).
    - ``s3://bucket?endpoint_url=https://...&region=...``: an S3-compatible bucket. Credentials come
      from the arguments or, when absent, from the standard AWS environment (variables, profile).
      ``options`` go to :class:`~gauntlet.storage.s3_store.S3Store` (timeouts, retries, multipart).
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"store URL {url!r}: use file:///absolute/path")
        return FileStore(parts.path, read_only=read_only)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"store URL {url!r} names no bucket: use s3://bucket?endpoint_url=...")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - _S3_OPTIONS
        if unknown:
            raise ConfigError(f"store URL {url!r}: unknown option(s) {sorted(unknown)}; "
                              f"credentials go in arguments or the AWS environment, never in the URL")
        from gauntlet.storage.s3_store import S3Store  # boto3 is only imported when needed

        if "retry_mode" in query:
            options.setdefault("retry_mode", query["retry_mode"])
        return S3Store(parts.netloc, endpoint_url=query.get("endpoint_url"), region=query.get("region"),
                       access_key=access_key, secret_key=secret_key, read_only=read_only, **options)
    raise ConfigError(f"unsupported store URL {url!r}: use file:///dir or s3://bucket?endpoint_url=...")


def check_card_endpoint(card: BucketCard, allow_local: bool = False) -> None:
    """Refuse cards that point a reader at plain HTTP, a private or loopback address, or a local
    directory — a hostile peer could otherwise aim validators at internal services. Local
    simulations and tests pass ``allow_local=True``."""
    if allow_local:
        return
    if card.scheme == "file":
        raise InvalidCommitment("a file:// bucket card is only usable in a local simulation")
    if not card.location:
        return  # the AWS default endpoint
    parts = urlsplit(card.location)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidCommitment(f"bucket card endpoint {card.location!r} must be an https:// URL")
    try:
        ip = ipaddress.ip_address(parts.hostname)
    except ValueError:
        if parts.hostname == "localhost" or parts.hostname.endswith(".localhost"):
            raise InvalidCommitment("bucket card endpoint may not be localhost") from None
        return
    if not ip.is_global:
        raise InvalidCommitment(f"bucket card endpoint {parts.hostname} is not a public address")


def store_from_card(card: BucketCard, *, allow_local: bool = False, **options) -> ObjectStore:
    """A read-only store for another node's bucket, from the card it committed on chain."""
    check_card_endpoint(card, allow_local)
    return open_store(card.store_url(), access_key=card.access_key or None,
                      secret_key=card.secret_key or None, read_only=True, **options)
