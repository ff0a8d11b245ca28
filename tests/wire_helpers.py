"""Helpers that build valid and deliberately broken messages for the wire tests."""

import json
import struct

import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.sparseloco import ErrorFeedback, encode_message

SHAPES = {"attn.weight": (128, 192), "odd.weight": (97, 131), "norm.weight": (192,)}


def updates(cfg: SparseLoCoConfig, shapes=SHAPES, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return ErrorFeedback(shapes, cfg).compress({n: torch.randn(s, generator=g) for n, s in shapes.items()})


def message(cfg, signer, window=7, run="run-a", shapes=SHAPES, **kw) -> bytes:
    return encode_message(updates(cfg, shapes), window=window, run=run, codec=cfg, signer=signer, **kw)


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text) - 8) % 8)
    return struct.pack("<Q", len(text)) + text + payload


def edit_gauntlet_header(data: bytes, edit) -> bytes:
    """Change fields of the signed JSON header, keeping the (now stale) signature."""
    header, payload = split(data)
    inner = json.loads(header["__metadata__"]["gauntlet"])
    edit(inner)
    header["__metadata__"]["gauntlet"] = json.dumps(inner, sort_keys=True, separators=(",", ":"))
    return join(header, payload)
