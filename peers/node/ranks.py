"""How rank 0 of a ``torchrun`` job drives the other ranks.

Rank 0 runs the node itself (chain, storage, every decision); the other ranks run
:meth:`Ranks.serve` and execute the engine operations rank 0 calls. An operation marked
:func:`collective` is sent to them first — its component and method name, and its arguments as JSON
and raw tensor bytes — and then every rank runs the same code on its shards. On one process nothing
is sent and the operation simply runs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

from gauntlet.errors import ConfigError
from gauntlet.parallel.world import World, broadcast_bytes, decode_call, encode_call

HEARTBEAT_S = 10.0  # an idle rank 0 tells the others it is alive this often


def collective(private: int = 0):
    """Mark a method of an engine component (a class with ``NAME`` and ``ranks``) that every rank runs.
    Rank 0's call is sent to the other ranks first; the last ``private`` arguments stay on rank 0
    (the others get None for them)."""
    def wrap(fn):
        @functools.wraps(fn)
        def call(self, *args):
            shared = list(args[:len(args) - private]) + [None] * private if private else list(args)
            self.ranks.send(f"{self.NAME}.{fn.__name__}", shared)
            return fn(self, *args)
        call.collective = True
        return call
    return wrap


class Ranks:
    def __init__(self, world: World) -> None:
        self.world = world
        self.last_beat = time.monotonic()

    @property
    def driving(self) -> bool:
        """Whether this process is rank 0 of several (it sends every collective operation)."""
        return self.world.distributed and self.world.main

    def send(self, op: str, args: list) -> None:
        """Rank 0: tell the other ranks to run ``op(*args)`` (nothing on one process or elsewhere)."""
        if self.driving:
            broadcast_bytes(self.world, encode_call(op, args))
            self.last_beat = time.monotonic()

    def serve(self, components: Mapping[str, object]) -> None:
        """Ranks other than 0: run what rank 0 calls on ``components`` (by ``NAME``) until it says stop."""
        while True:
            op, args = decode_call(broadcast_bytes(self.world, None))
            if op == "stop":
                return
            if op == "heartbeat":
                continue
            name, _, method_name = op.partition(".")
            component = components.get(name)
            method = getattr(type(component), method_name, None) if component is not None else None
            if method is None or not getattr(method, "collective", False):
                raise ConfigError(f"rank 0 asked for an unknown operation {op!r}: are all ranks on one version?")
            method.__wrapped__(component, *args)

    def stop(self) -> None:
        """Rank 0: release the other ranks (they return from :meth:`serve`)."""
        self.send("stop", [])

    def idle(self) -> None:
        """Called while rank 0 waits: keeps the other ranks' collective waits under their timeout."""
        if self.driving and time.monotonic() - self.last_beat >= HEARTBEAT_S:
            self.send("heartbeat", [])
