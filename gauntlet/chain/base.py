"""The chain interface every backend implements, and the values it returns."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from gauntlet.errors import ChainError

COMMITMENT_FIELD_BYTES = 128  # Bittensor's largest raw commitment field (Raw128)
COMMITMENT_MAX_FIELDS = 3  # the Commitments pallet's MaxFields
MAX_COMMITMENT_BYTES = COMMITMENT_FIELD_BYTES * COMMITMENT_MAX_FIELDS


@dataclass(frozen=True)
class Neuron:
    uid: int
    hotkey: str
    stake: float
    validator_permit: bool


@dataclass(frozen=True)
class Payout:
    """What the chain's last epoch gave a uid (docs/payouts.md)."""

    uid: int
    hotkey: str
    incentive: float  # its share of the miners' emission, 0..1
    dividends: float  # its share of the validators' emission, 0..1
    emission: int  # paid to it at the last epoch, in the chain's smallest unit
    balance: int  # local chain: everything paid to it so far; Bittensor: its stake, where emission accrues


@dataclass(frozen=True)
class Commitment:
    hotkey: str
    data: bytes
    block: int  # the block it was published at


class HotkeySigner(Protocol):
    """What signs chain writes: :class:`gauntlet.identity.Identity` is one."""

    @property
    def hotkey(self) -> str: ...

    @property
    def keypair(self): ...


class Chain(Protocol):
    """A subnet's view of the chain: the block clock, the registry, commitments and weights."""

    url: str
    netuid: int

    def block(self) -> int:
        """The current block number."""
        ...

    def timestamp(self, block: int) -> float:
        """Unix time at which ``block`` was (or, for a future block, is expected to be) produced."""
        ...

    def metagraph(self) -> list[Neuron]:
        """Every registered neuron, by uid."""
        ...

    def commit(self, signer: HotkeySigner, data: bytes) -> None:
        """Publish ``data`` (≤ 384 bytes) as the signer's commitment, replacing its previous one."""
        ...

    def commitments(self) -> dict[str, Commitment]:
        """The latest commitment of every hotkey that has one."""
        ...

    def owner_hotkey(self) -> str:
        """The subnet owner's hotkey (whose commitment names the run's manifest); ChainError if none."""
        ...

    def set_weights(self, signer: HotkeySigner, weights: Mapping[int, float]) -> None:
        """Set the signer's (a validator's) weights over uids."""
        ...

    def weights(self) -> dict[int, dict[int, float]]:
        """The latest weights of each validator uid, each row normalised to sum to 1."""
        ...

    def payouts(self) -> list[Payout]:
        """Every uid's incentive, dividends and emission at the last epoch, and its balance."""
        ...

    def close(self) -> None: ...


def window_of(block: int, blocks_per_window: int) -> int:
    """The window a block belongs to (docs/protocol.md §1)."""
    return block // blocks_per_window


def checked_weights(weights: Mapping[int, float]) -> dict[int, float]:
    """``weights`` as uid (int ≥ 0) → weight (finite, ≥ 0); ChainError for anything else, including
    two keys that name the same uid (``1`` and ``"1"``)."""
    out: dict[int, float] = {}
    for key, value in weights.items():
        try:
            uid, weight = int(key), float(value)
        except (TypeError, ValueError):
            raise ChainError(f"weights refused: {key!r}: {value!r} is not a uid and a number") from None
        if uid < 0 or str(uid) != str(key).strip():
            raise ChainError(f"weights refused: {key!r} is not a uid (a whole number from 0)")
        if uid in out:
            raise ChainError(f"weights refused: uid {uid} appears twice")
        if not math.isfinite(weight) or weight < 0:
            raise ChainError(f"weights refused: the weight of uid {uid} is {weight}; weights are finite and >= 0")
        out[uid] = weight
    return out


def normalise(weights: Mapping[int, float]) -> dict[int, float]:
    """Drop non-positive entries and scale the rest to sum to 1 (empty if nothing is positive)."""
    positive = {int(u): float(w) for u, w in weights.items() if w > 0}
    total = sum(positive.values())
    return {u: w / total for u, w in sorted(positive.items())} if total > 0 else {}
