"""A minimal, strict safetensors container: write with canonical offsets, parse without trusting.

The safetensors layout is: an 8-byte little-endian header length N, N bytes of JSON (padded with
spaces to a multiple of 8), then the tensor data. Entries map a name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` relative to the data start; ``__metadata__`` maps strings to strings.

Files written here are ordinary safetensors files (the ``safetensors`` library reads them). The
parser only reads the JSON header, after checking its declared length against a limit; the caller
checks every entry against what it expects before touching the data.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from gauntlet.errors import InvalidMessage

DTYPES: dict[torch.dtype, tuple[str, int]] = {
    torch.float32: ("F32", 4),
    torch.bfloat16: ("BF16", 2),
    torch.uint8: ("U8", 1),
}
NAMES: dict[str, torch.dtype] = {name: dt for dt, (name, _) in DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def write(tensors: list[tuple[str, torch.Tensor]], metadata: Mapping[str, str]) -> bytes:
    """Serialise 1-D tensors in the given order, contiguously from offset 0."""
    header: dict[str, object] = {"__metadata__": dict(metadata)}
    chunks: list[bytes] = []
    offset = 0
    for name, t in tensors:
        dtype, size = DTYPES[t.dtype]
        raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((-len(text) - 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def read_header(data: bytes | bytearray | memoryview, max_header_bytes: int) -> tuple[dict, int]:
    """(parsed JSON header, data start offset). Raises InvalidMessage on anything malformed."""
    if len(data) < 8:
        raise InvalidMessage(f"message is {len(data)} bytes: too short for a safetensors header")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > max_header_bytes:
        raise InvalidMessage(f"header declares {n} bytes, over the {max_header_bytes}-byte limit")
    if 8 + n > len(data):
        raise InvalidMessage(f"header declares {n} bytes but the message has only {len(data) - 8} after it")
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidMessage(f"header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidMessage("header must be a JSON object")
    return header, 8 + n


def parse_entry(name: str, raw: object) -> Entry:
    """Validate one safetensors entry's structure (not yet its plausibility)."""
    if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
        raise InvalidMessage(f"entry {name!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in NAMES:
        raise InvalidMessage(f"entry {name!r} has dtype {dtype!r}; expected one of {sorted(NAMES)}")
    ints = shape if isinstance(shape, list) else None
    if ints is None or len(ints) != 1 or not all(type(d) is int and d >= 0 for d in ints):
        raise InvalidMessage(f"entry {name!r} must be 1-D with a non-negative length")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise InvalidMessage(f"entry {name!r} has malformed data_offsets")
    return Entry(dtype, (ints[0],), offsets[0], offsets[1])
