"""The chain: the :class:`Chain` interface, an embedded SQLite chain and the Bittensor backend."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from gauntlet.chain.base import MAX_COMMITMENT_BYTES, Chain, Commitment, Neuron, Payout, window_of
from gauntlet.chain.local import LocalChain
from gauntlet.errors import ConfigError

__all__ = ["MAX_COMMITMENT_BYTES", "Chain", "Commitment", "Neuron", "Payout", "open_chain", "window_of"]


def open_chain(url: str, **options) -> Chain:
    """Open a chain from a URL.

    - ``local:///path/chain.db?block_time=12&clock=wall|manual&netuid=1&tempo=360&emission_per_block=1000000000
      &commit_reveal=0&reveal_period=1``: the embedded chain (created if missing; its settings are
      fixed by whoever creates the file).
    - ``bittensor://NETWORK/NETUID`` with NETWORK ``finney``, ``test``, ``local`` or a
      ``ws://``/``wss://`` endpoint written as ``bittensor://ws://host:port/NETUID``.

    ``options`` go to the backend (e.g. ``timeout``, or ``substrate`` for an in-process chain).
    """
    if url.startswith("local://"):
        parts = urlsplit(url)
        if parts.netloc or not parts.path.startswith("/"):
            raise ConfigError(f"chain URL {url!r}: use local:///absolute/path/chain.db")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"block_time", "clock", "netuid", "tempo", "emission_per_block", "commit_reveal",
                                "reveal_period"}
        if unknown:
            raise ConfigError(f"chain URL {url!r}: unknown option(s) {sorted(unknown)}")
        try:
            kwargs = {"block_time": float(query.get("block_time", 12.0)), "clock": query.get("clock", "wall"),
                      "netuid": int(query.get("netuid", 1)), "tempo": int(query.get("tempo", 360)),
                      "emission_per_block": int(query.get("emission_per_block", 10**9)),
                      "commit_reveal": query.get("commit_reveal", "0") in ("1", "true", "on"),
                      "reveal_period": int(query.get("reveal_period", 1))}
        except ValueError as exc:
            raise ConfigError(f"chain URL {url!r}: {exc}") from None
        return LocalChain(parts.path, **{**kwargs, **options})
    if url.startswith("bittensor://"):
        network, _, netuid = url.removeprefix("bittensor://").rstrip("/").rpartition("/")
        if not network or not netuid.isdigit():
            raise ConfigError(f"chain URL {url!r}: use bittensor://NETWORK/NETUID, e.g. bittensor://finney/3")
        from gauntlet.chain.bittensor_chain import BittensorChain  # deferred: the bittensor SDK is heavy

        return BittensorChain(network, int(netuid), **options)
    raise ConfigError(f"unsupported chain URL {url!r}: use local:///path/chain.db or bittensor://NETWORK/NETUID")
