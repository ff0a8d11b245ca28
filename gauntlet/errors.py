"""The typed errors users catch.

Every error raised on purpose by Gauntlet derives from :class:`GauntletError`, and each one carries a
message that says what went wrong and what to do about it. Errors about bad input are also
``ValueError`` so that generic callers can catch them the usual way.
"""

from __future__ import annotations


class GauntletError(Exception):
    """Base class of every error Gauntlet raises on purpose."""


class ConfigError(GauntletError, ValueError):
    """A configuration file, field or override is invalid."""


class DataError(GauntletError, ValueError):
    """A dataset file is unusable: truncated, of another tokenizer, missing a column, unreadable."""


class InvalidMessage(GauntletError, ValueError):
    """Bytes that claim to be a peer message are malformed, oversized, unsigned or not for us.

    Raised by :func:`gauntlet.sparseloco.wire.decode_message` for any input that is not a valid,
    expected message. A validator scores such a message zero; it never crashes on it.
    """


class SignatureError(InvalidMessage):
    """A message's signature is missing or does not verify against the claimed hotkey."""


class CodecError(GauntletError, ValueError):
    """Tensors handed to the codec cannot be encoded (wrong dtype, non-finite values, bad shape)."""


class TransportError(GauntletError):
    """Peers could not exchange messages (a collective failed, a payload was too large)."""


class StorageError(GauntletError):
    """An object store operation failed (after retries, where retrying made sense)."""


class ObjectNotFound(StorageError):
    """The object does not exist."""


class ObjectTooLarge(StorageError):
    """The object is larger than the caller's limit; its body was not (fully) read."""


class AccessDenied(StorageError):
    """The credentials may not do this (a read-only key writing, a wrong secret)."""


class InvalidCommitment(GauntletError, ValueError):
    """A chain commitment (e.g. a bucket card) is malformed."""


class ChainError(GauntletError):
    """A chain operation failed or the chain is unreachable."""
