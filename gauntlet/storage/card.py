"""Bucket cards: how a peer tells everyone where to read its messages (through its chain commitment).

A card holds a store URL and a *read-only* key pair. Its compact binary encoding::

    b"GC" | version (1 byte, = 1) | 6 or 7 × (length: 1 byte | UTF-8 bytes)
    fields: scheme ("s3" or "file"), location (endpoint URL or directory), bucket, region,
            access key id, secret access key, [note]  (each at most 255 bytes)

The optional note carries a validator's record chain head (``record:WINDOW:SHA256``).

A Bittensor commitment carries at most ``MaxFields`` (3) raw fields of at most 128 bytes, so an
encoded card may not exceed 384 bytes; the chain adapters split it into 128-byte fields. A typical
Cloudflare R2 card (65-byte endpoint, 32-byte bucket, 32 + 64-byte keys) encodes to 208 bytes:
two fields. Publish only a key that can do nothing but read: anyone can read the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from gauntlet.chain.base import MAX_COMMITMENT_BYTES as MAX_CARD_BYTES
from gauntlet.errors import InvalidCommitment

MAGIC = b"GC"
VERSION = 1


@dataclass(frozen=True)
class BucketCard:
    scheme: str  # "s3" or "file"
    location: str  # endpoint URL for s3 ("" = the AWS default), directory for file
    bucket: str = ""
    region: str = ""
    access_key: str = ""
    secret_key: str = ""
    note: str = ""  # optional 7th field, e.g. a validator's record chain head "record:W:HASH"

    def __repr__(self) -> str:  # never print the secret, even a read-only one
        return f"BucketCard({self.store_url()!r}, access_key={self.access_key!r})"

    def store_url(self) -> str:
        """The URL :func:`gauntlet.storage.open_store` understands (credentials not included)."""
        if self.scheme == "file":
            return f"file://{self.location}"
        query = "&".join(f"{k}={quote(v, safe=':/')}" for k, v in
                         (("endpoint_url", self.location), ("region", self.region)) if v)
        return f"s3://{self.bucket}" + (f"?{query}" if query else "")

    def encode(self) -> bytes:
        parts = (self.scheme, self.location, self.bucket, self.region, self.access_key, self.secret_key)
        parts += (self.note,) if self.note else ()
        out = bytearray(MAGIC + bytes([VERSION]))
        for part in parts:
            raw = part.encode("utf-8")
            if len(raw) > 255:
                raise ValueError(f"bucket card field {part[:20]!r}... is over 255 bytes")
            out += bytes([len(raw)]) + raw
        if len(out) > MAX_CARD_BYTES:
            raise ValueError(f"bucket card is {len(out)} bytes; a commitment holds at most {MAX_CARD_BYTES}")
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> "BucketCard":
        """Parse a card; raises InvalidCommitment for anything that is not a valid card."""
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_CARD_BYTES:
            raise InvalidCommitment("a bucket card is at most 384 bytes")
        if data[:2] != MAGIC or len(data) < 3 or data[2] != VERSION:
            raise InvalidCommitment("not a version-1 bucket card (bad magic or version)")
        pos, parts = 3, []
        for n in range(7):
            if n == 6 and pos == len(data):
                break  # the note is optional
            if pos >= len(data):
                raise InvalidCommitment("bucket card is truncated")
            n = data[pos]
            raw = bytes(data[pos + 1 : pos + 1 + n])
            if len(raw) != n:
                raise InvalidCommitment("bucket card is truncated")
            try:
                parts.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidCommitment("bucket card field is not UTF-8") from None
            pos += 1 + n
        if pos != len(data) or (len(parts) == 7 and not parts[6]):
            raise InvalidCommitment("bucket card has trailing bytes")
        card = cls(*parts)
        if card.scheme not in ("s3", "file"):
            raise InvalidCommitment(f"bucket card scheme {card.scheme!r} is not s3 or file")
        if card.scheme == "s3" and not card.bucket:
            raise InvalidCommitment("an s3 bucket card needs a bucket name")
        if card.scheme == "file" and not card.location.startswith("/"):
            raise InvalidCommitment("a file bucket card needs an absolute directory")
        if any(c in p for p in parts for c in "\x00\r\n"):
            raise InvalidCommitment("bucket card fields may not hold control characters")
        return card

