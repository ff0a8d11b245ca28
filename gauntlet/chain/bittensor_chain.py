"""The Bittensor backend: a subnet through the bittensor SDK v11.

The SDK is asynchronous; this adapter owns one event loop on a background thread and one client
connection, and gives every call a deadline, so an unreachable network becomes a
:class:`~gauntlet.errors.ChainError` instead of a hang.

- block: ``Client.block()``; metagraph: ``client.subnets.metagraph`` (the runtime API).
- subnet owner: the ``SubtensorModule.SubnetOwnerHotkey`` storage item of the netuid.
- commitments: the raw ``Commitments.set_commitment`` call signed by the hotkey, the data cut into
  ``Raw`` fields of at most 128 bytes (at most 3: 384 bytes); read back with
  ``client.subnets.commitments`` by joining the raw fields.
- weights: the SDK's ``SetWeights`` intent, which conforms the weights to the subnet's limits and
  takes the plaintext or timelocked commit-reveal path that the subnet runs; read with the
  ``weights`` read (rows normalised to 1).

The SDK caches small files under ``~/.bittensor``; point ``HOME`` elsewhere to isolate it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from bittensor import BittensorError, Client, calls
from bittensor.intents.weights import SetWeights

from gauntlet.chain.base import (
    COMMITMENT_FIELD_BYTES,
    MAX_COMMITMENT_BYTES,
    Commitment,
    HotkeySigner,
    Neuron,
    Payout,
    checked_weights,
    normalise,
)
from gauntlet.errors import ChainError

T = TypeVar("T")


def split_fields(data: bytes, size: int = COMMITMENT_FIELD_BYTES) -> list[bytes]:
    """Cut a commitment into raw fields of at most ``size`` bytes (one empty field for b"")."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def raw_field_bytes(fields: list) -> bytes:
    """Join the ``Raw*`` fields of a decoded commitment back into bytes."""
    out = b""
    for entry in fields:
        if not isinstance(entry, dict):
            continue
        for variant, value in entry.items():
            if variant.startswith("Raw"):
                if isinstance(value, str):
                    out += bytes.fromhex(value.removeprefix("0x"))
                elif isinstance(value, (bytes, bytearray, list, tuple)):
                    out += bytes(value)
    return out


class BittensorChain:
    def __init__(self, network: str, netuid: int, *, substrate: Any = None, timeout: float = 30.0) -> None:
        self.network = network
        self.netuid = netuid
        self.url = f"bittensor://{network}/{netuid}"
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bittensor-chain", daemon=True)
        self._thread.start()
        try:
            self._client = Client(network, substrate=substrate, fallback_endpoints=[], archive_endpoints=[])
            self._run(self._client.connect(), "connect")
        except BaseException:
            self._stop_loop()
            raise

    # --------------------------------------------------------------------------------- plumbing

    def _run(self, coro: Awaitable[T], what: str) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout)
        except FutureTimeout:
            future.cancel()
            raise ChainError(f"{what} on {self.url}: no answer within {self.timeout:.0f} s; "
                             "is the network reachable?") from None
        except BittensorError as exc:
            raise ChainError(f"{what} on {self.url}: {exc}") from exc
        except (OSError, ConnectionError) as exc:
            raise ChainError(f"{what} on {self.url}: {exc}") from exc

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    @staticmethod
    def _check(result: Any, what: str) -> None:
        if not result.success:
            raise ChainError(f"{what} failed on chain: {result.message or result.error}")

    # -------------------------------------------------------------------------------- interface

    def block(self) -> int:
        return int(self._run(self._client.block(), "read the block"))

    def timestamp(self, block: int) -> float:
        current = self.block()
        if block <= current:
            return self._run(self._client.timestamp(block), f"read the time of block {block}").timestamp()
        seconds = self._run(self._client.block_time(), "read the block time")
        return time.time() + (block - current) * seconds

    def metagraph(self) -> list[Neuron]:
        graph = self._run(self._client.subnets.metagraph(self.netuid, commitments=False), "read the metagraph")
        if graph is None:
            raise ChainError(f"subnet {self.netuid} does not exist on {self.network}")
        return [Neuron(n.uid, n.hotkey, float(n.total_stake.rao) / 1e9, bool(n.validator_permit))
                for n in graph.neurons]

    def payouts(self) -> list[Payout]:
        """The metagraph's incentive, dividends and emission of the last epoch; the balance is the
        hotkey's stake on the subnet, where its emission accrues."""
        graph = self._run(self._client.subnets.metagraph(self.netuid, commitments=False), "read the metagraph")
        if graph is None:
            raise ChainError(f"subnet {self.netuid} does not exist on {self.network}")
        return [Payout(n.uid, n.hotkey, float(n.incentive), float(n.dividends), int(n.emission.rao),
                       int(n.total_stake.rao)) for n in graph.neurons]

    def commit(self, signer: HotkeySigner, data: bytes) -> None:
        if len(data) > MAX_COMMITMENT_BYTES:
            raise ChainError(f"commitment is {len(data)} bytes; at most {MAX_COMMITMENT_BYTES} fit")
        fields = [{f"Raw{len(part)}": part} for part in split_fields(bytes(data))]
        call = calls.Commitments.set_commitment(netuid=self.netuid, info={"fields": fields})
        result = self._run(self._client.submit_call(call, signer.keypair, signer="hotkey"), "publish a commitment")
        self._check(result, "publishing the commitment")

    def commitments(self) -> dict[str, Commitment]:
        found = self._run(self._client.subnets.commitments(self.netuid), "read commitments")
        return {hotkey: Commitment(hotkey, raw_field_bytes(c.fields), int(c.block))
                for hotkey, c in sorted(found.items()) if c is not None}

    def owner_hotkey(self) -> str:
        owner = self._run(self._client.query(("SubtensorModule", "SubnetOwnerHotkey"), [self.netuid]),
                          "read the subnet owner's hotkey")
        if not owner:
            raise ChainError(f"subnet {self.netuid} on {self.network} has no owner hotkey")
        return str(owner)

    def set_weights(self, signer: HotkeySigner, weights: Mapping[int, float]) -> None:
        row = normalise(checked_weights(weights))
        if not row:
            raise ChainError("all weights are zero; nothing to set")
        intent = SetWeights(netuid=self.netuid, uids=list(row), weights=list(row.values()))
        result = self._run(self._client.execute(intent, signer.keypair), "set weights")
        self._check(result, "setting weights")

    def weights(self) -> dict[int, dict[int, float]]:
        rows = self._run(self._client.read("weights", netuid=self.netuid), "read weights")
        return {int(v): {int(u): float(w) for u, w in row.items()} for v, row in rows.items()}

    def close(self) -> None:
        try:
            self._run(self._client.close(), "close")
        except ChainError:
            pass
        finally:
            self._stop_loop()
