"""Loading a node's behaviour by name: a built-in one, or a user's ``module:Class`` (simulations and
research plug their own peers and validators in this way)."""

from __future__ import annotations

import importlib


def load_plugin(spec: str, built_in: dict[str, type], base: type, kind: str):
    """An instance of ``built_in[spec]``, or of the ``module:Class`` that ``spec`` names, which must
    subclass ``base``. ValueError, saying what to write instead, for anything else."""
    if spec in built_in:
        return built_in[spec]()
    module_name, _, class_name = spec.partition(":")
    if not class_name:
        raise ValueError(f"unknown {kind} {spec!r}: use one of {sorted(built_in)} or module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load {kind} {spec!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{spec!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    return cls()
