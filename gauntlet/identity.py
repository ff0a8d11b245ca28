"""Hotkey identities: sr25519 keypairs that sign messages, and signature checks against an address.

Real runs load a bittensor wallet's hotkey (:meth:`Identity.from_keypair`); simulations and tests
derive throwaway keys from a seed or a secret URI such as ``//Alice``.
"""

from __future__ import annotations

import hashlib
import secrets

from bittensor_core import Keypair
from bittensor_core import verify as _sr25519_verify


class Identity:
    """A hotkey that can sign. ``hotkey`` is its SS58 address, what the chain registers."""

    def __init__(self, keypair: Keypair) -> None:
        self._keypair = keypair

    @classmethod
    def from_keypair(cls, keypair: Keypair) -> "Identity":
        return cls(keypair)

    @classmethod
    def from_seed(cls, seed: bytes | str) -> "Identity":
        """Deterministic key from any seed (hashed to 32 bytes): for simulations and tests."""
        raw = seed.encode() if isinstance(seed, str) else bytes(seed)
        return cls(Keypair.from_seed(hashlib.sha256(b"gauntlet-identity:" + raw).digest()))

    @classmethod
    def from_uri(cls, uri: str) -> "Identity":
        return cls(Keypair.from_uri(uri))

    @classmethod
    def from_wallet(cls, name: str, hotkey: str = "default", path: str | None = None) -> "Identity":
        """The hotkey of a bittensor wallet on disk (``~/.bittensor/wallets/NAME/hotkeys/HOTKEY``)."""
        from bittensor import Wallet  # the full SDK is only needed for wallets on disk

        wallet = Wallet(name, hotkey=hotkey, **({"path": path} if path else {}))
        return cls(wallet.hotkey)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(Keypair.from_seed(secrets.token_bytes(32)))

    @property
    def hotkey(self) -> str:
        return self._keypair.ss58_address

    @property
    def keypair(self) -> Keypair:
        """The sr25519 keypair, for signing chain extrinsics."""
        return self._keypair

    def sign(self, data: bytes) -> bytes:
        """64-byte sr25519 signature of ``data``."""
        return bytes(self._keypair.sign(data))

    def __repr__(self) -> str:
        return f"Identity({self.hotkey})"


def verify_signature(hotkey: str, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``hotkey``'s signature of ``data``; False for any bad input."""
    try:
        return bool(_sr25519_verify(data, signature, hotkey))
    except (ValueError, TypeError):
        return False
