"""The wire format of a peer message: a safetensors file with a signed JSON header.

Layout (an ordinary safetensors file, readable by the ``safetensors`` library)::

    __metadata__ = {"gauntlet": <header JSON>, "signature": <hex sr25519 signature, or absent>}
    per tensor, in header order:   sparse     -> NAME::lookup (F32), NAME::idx (U8), NAME::codes (U8)
                                    dense 8   -> NAME::lookup (F32), NAME::codes (U8)
                                    dense 16  -> NAME::raw (BF16)
    parts are stored F32 first, then BF16, then U8, each group in header order, contiguously.

The header holds the protocol version, run hash, window, sender hotkey, codec parameters, the
tensors' names and shapes, and the sha256 of the data section. The signature signs
``b"gauntlet-message-v1:" + sha256(header JSON)``: it covers every byte, and because part offsets
are canonical (fully determined by the header) no byte can be reinterpreted. It is detachable: the
digest can be signed and checked apart from the message.

:func:`decode_message` checks sizes, structure, expectations and the signature before it allocates
anything proportional to the message, then unpacks and checks the contents (index range and order,
padding, finite lookup tables). Any problem raises :class:`~gauntlet.errors.InvalidMessage`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.identity import verify_signature
from gauntlet.sparseloco import bitpack, container
from gauntlet.sparseloco.chunking import TensorLayout, make_layout
from gauntlet.sparseloco.compress import CompressedTensor

PROTOCOL_VERSION = 1
SIGNING_PREFIX = b"gauntlet-message-v1:"
CODEC_FIELDS = ("chunk_size", "topk", "quant_bits", "dense_bits", "min_sparse_numel", "sparse_1d")
_PART_ORDER = {"lookup": 0, "raw": 1, "idx": 2, "codes": 2}  # F32, BF16, U8 groups

_HEX = set("0123456789abcdef")
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_HEADER_BYTES = 4 << 20
DEFAULT_MAX_TENSORS = 4096
DEFAULT_MAX_NUMEL = 1 << 34


class Signer(Protocol):
    """What :func:`encode_message` needs to sign: a hotkey address and a sign function.
    :class:`gauntlet.identity.Identity` is one."""

    @property
    def hotkey(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class MessageHeader:
    version: int
    run: str
    window: int
    hotkey: str
    codec: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    payload_sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


class HeaderFields:
    """``window`` and ``hotkey`` of anything that carries a message ``header``."""

    header: MessageHeader

    @property
    def window(self) -> int:
        return self.header.window

    @property
    def hotkey(self) -> str:
        return self.header.hotkey


@dataclass(frozen=True)
class Message(HeaderFields):
    header: MessageHeader
    tensors: dict[str, CompressedTensor]
    digest: bytes
    signature: bytes | None
    nbytes: int
    raw: bytearray | None = field(default=None, repr=False, compare=False)  # the bytes (the lookups view them)


def codec_params(cfg: SparseLoCoConfig) -> dict[str, Any]:
    """The config fields a decoder needs, as they appear in the header."""
    return {f: getattr(cfg, f) for f in CODEC_FIELDS}


def signing_digest(header_json: str) -> bytes:
    """The bytes a sender signs for a header."""
    return SIGNING_PREFIX + hashlib.sha256(header_json.encode()).digest()


def _parts(name: str, ct: CompressedTensor) -> list[tuple[str, torch.Tensor]]:
    lay = ct.layout
    if ct.raw is not None:
        return [(f"{name}::raw", ct.raw.reshape(-1))]
    bits = 8 if not lay.sparse else int(math.log2(ct.lookup.numel()))
    out = [(f"{name}::lookup", ct.lookup.float().reshape(-1))]
    if lay.sparse:
        out.append((f"{name}::idx", bitpack.pack_indices(ct.idx, lay.index_bits)))
    out.append((f"{name}::codes", bitpack.pack_codes(ct.codes, bits)))
    return out


def _ordered(parts: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return sorted(parts, key=lambda p: _PART_ORDER[p[0].rsplit("::", 1)[1]])  # stable: keeps header order


def encode_message(
    tensors: Mapping[str, CompressedTensor],
    *,
    window: int,
    run: str,
    codec: SparseLoCoConfig,
    signer: Signer | None = None,
    hotkey: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise compressed tensors into a message; signed when a signer is given."""
    if signer is not None:
        hotkey = signer.hotkey
    if hotkey is None:
        raise ValueError("encode_message needs a signer or an explicit hotkey")
    names = sorted(tensors)
    parts = _ordered([p for n in names for p in _parts(n, tensors[n])])
    payload = b"".join(t.cpu().contiguous().view(torch.uint8).numpy().tobytes() for _, t in parts)
    header = {
        "v": PROTOCOL_VERSION,
        "run": run,
        "window": int(window),
        "hotkey": hotkey,
        "codec": codec_params(codec),
        "tensors": [{"name": n, "shape": list(tensors[n].layout.shape)} for n in names],
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "extra": dict(extra or {}),
    }
    header_json = json.dumps(header, sort_keys=True, separators=(",", ":"))
    metadata = {"gauntlet": header_json}
    if signer is not None:
        metadata["signature"] = signer.sign(signing_digest(header_json)).hex()
    return container.write(parts, metadata)


# ----------------------------------------------------------------------------------------- decode


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise InvalidMessage(msg)


def _is_int(x: object, lo: int = 0) -> bool:
    return type(x) is int and x >= lo


def _parse_codec(raw: object) -> SparseLoCoConfig:
    _check(isinstance(raw, dict) and set(raw) == set(CODEC_FIELDS), f"codec must have exactly {CODEC_FIELDS}")
    _check(all(type(raw[f]) is int for f in CODEC_FIELDS[:-1]) and type(raw["sparse_1d"]) is bool,
           "codec fields have the wrong types")
    try:
        return SparseLoCoConfig(**raw)
    except ValueError as exc:
        raise InvalidMessage(f"codec parameters are invalid: {exc}") from None


def _parse_shapes(raw: object, max_tensors: int, max_numel: int) -> dict[str, tuple[int, ...]]:
    _check(isinstance(raw, list) and 0 < len(raw) <= max_tensors, f"tensors must be a list of 1..{max_tensors}")
    shapes: dict[str, tuple[int, ...]] = {}
    for item in raw:
        _check(isinstance(item, dict) and set(item) == {"name", "shape"}, "each tensor needs name and shape")
        name, shape = item["name"], item["shape"]
        _check(isinstance(name, str) and 0 < len(name) <= 256 and "::" not in name, "bad tensor name")
        _check(isinstance(shape, list) and len(shape) <= 8 and all(_is_int(d, 1) for d in shape),
               f"tensor {name!r}: shape must be at most 8 positive ints")
        _check(math.prod(shape) <= max_numel, f"tensor {name!r}: {math.prod(shape)} values exceed the limit")
        _check(name not in shapes, f"tensor {name!r} appears twice")
        shapes[name] = tuple(shape)
    _check(list(shapes) == sorted(shapes), "tensors must be listed in name order")
    return shapes


def parse_header(
    header_json: str, max_tensors: int = DEFAULT_MAX_TENSORS, max_numel: int = DEFAULT_MAX_NUMEL
) -> MessageHeader:
    """Validate the JSON header of a message (structure and types only)."""
    try:
        raw = json.loads(header_json)
    except (json.JSONDecodeError, RecursionError):
        raise InvalidMessage("gauntlet header is not valid JSON") from None
    keys = {"v", "run", "window", "hotkey", "codec", "tensors", "payload_sha256", "extra"}
    _check(isinstance(raw, dict) and set(raw) == keys, f"gauntlet header must have exactly {sorted(keys)}")
    _check(raw["v"] == PROTOCOL_VERSION and type(raw["v"]) is int, f"unsupported protocol version {raw['v']!r}")
    _check(isinstance(raw["run"], str) and len(raw["run"]) <= 128, "run must be a short string")
    _check(_is_int(raw["window"]), "window must be a non-negative int")
    _check(isinstance(raw["hotkey"], str) and len(raw["hotkey"]) <= 128, "hotkey must be a short string")
    digest = raw["payload_sha256"]
    _check(isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX,
           "payload_sha256 must be 64 lowercase hex characters")
    _check(isinstance(raw["extra"], dict), "extra must be an object")
    codec = codec_params(_parse_codec(raw["codec"]))
    shapes = _parse_shapes(raw["tensors"], max_tensors, max_numel)
    return MessageHeader(raw["v"], raw["run"], raw["window"], raw["hotkey"], codec, shapes, digest, raw["extra"])


def _expected_parts(shapes: Mapping[str, tuple[int, ...]], cfg: SparseLoCoConfig) -> tuple[dict, list]:
    """Layouts by name, and the canonical [(key, dtype, length_in_elements)] of the payload."""
    layouts = {n: make_layout(s, cfg) for n, s in shapes.items()}
    parts: list[tuple[str, str, int]] = []
    for name, lay in layouts.items():
        if not lay.sparse and cfg.dense_bits == 16:
            parts.append((f"{name}::raw", "BF16", lay.numel))
            continue
        bits = cfg.quant_bits if lay.sparse else 8
        parts.append((f"{name}::lookup", "F32", 1 << bits))
        if lay.sparse:
            parts.append((f"{name}::idx", "U8", bitpack.packed_len(lay.kept, lay.index_bits)))
        parts.append((f"{name}::codes", "U8", bitpack.packed_len(lay.kept, bits)))
    return layouts, _ordered(parts)


def part_offsets(shapes: Mapping[str, tuple[int, ...]], cfg: SparseLoCoConfig) -> dict[str, tuple[int, int]]:
    """Where each part (``NAME::idx`` …) lies in the data section of any valid message with these
    shapes and codec: ``(begin, end)`` bytes from the data start. Offsets are canonical, so this is
    the same for every sender; only the header before the data section differs in length."""
    _, parts = _expected_parts({n: tuple(shapes[n]) for n in sorted(shapes)}, cfg)  # messages list names in order
    out, offset = {}, 0
    for key, dtype, count in parts:
        size = count * (4 if dtype == "F32" else 2 if dtype == "BF16" else 1)
        out[key] = (offset, offset + size)
        offset += size
    return out


def _check_entries(header: dict, parts: list, data_len: int) -> None:
    names = {k for k in header if k != "__metadata__"}
    _check(names == {p[0] for p in parts}, "payload tensors do not match the header's tensor list")
    offset = 0
    for key, dtype, count in parts:
        entry = container.parse_entry(key, header[key])
        size = count * (4 if dtype == "F32" else 2 if dtype == "BF16" else 1)
        _check(entry.dtype == dtype and entry.shape == (count,), f"{key}: expected {dtype}[{count}]")
        _check((entry.begin, entry.end) == (offset, offset + size), f"{key}: non-canonical data offsets")
        offset += size
    _check(offset == data_len, f"payload is {data_len} bytes; the header implies {offset}")


def _unpack_indices(name: str, packed: torch.Tensor, lay: TensorLayout) -> torch.Tensor:
    """(num_chunks, k) int64 indices, checked: zero filler, strictly increasing, in range, not padding."""
    _check(bitpack.index_padding_ok(packed, lay.index_bits, lay.kept), f"{name}: non-zero index filler")
    idx = bitpack.unpack_indices(packed, lay.index_bits, lay.kept).view(lay.num_chunks, lay.k)
    if lay.k > 1:
        _check(bool((idx[:, 1:] > idx[:, :-1]).all()), f"{name}: indices not strictly increasing (duplicate?)")
    _check(int(idx[:, -1].max()) < lay.chunk_numel, f"{name}: index out of range for {lay.chunk_numel}-value chunks")
    if lay.pad_mask is not None:
        _check(not bool(lay.pad_mask.gather(1, idx).any()), f"{name}: index points into chunk padding")
    return idx


def _unpack(
    buf: bytearray, start: int, header: dict, layouts: Mapping[str, TensorLayout], cfg: SparseLoCoConfig
) -> dict[str, CompressedTensor]:
    def part(key: str) -> torch.Tensor | None:
        if key not in header:
            return None
        a, b = header[key]["data_offsets"]
        dtype = container.NAMES[header[key]["dtype"]]
        return torch.frombuffer(buf, dtype=torch.uint8, count=b - a, offset=start + a).view(dtype)

    out: dict[str, CompressedTensor] = {}
    for name, lay in layouts.items():
        raw, lookup = part(f"{name}::raw"), part(f"{name}::lookup")
        if raw is not None:
            _check(bool(torch.isfinite(raw).all()), f"{name}: non-finite dense values")
            out[name] = CompressedTensor(lay, raw=raw)
            continue
        _check(bool(torch.isfinite(lookup).all()), f"{name}: non-finite lookup table")
        bits = cfg.quant_bits if lay.sparse else 8
        packed = part(f"{name}::codes")
        _check(bitpack.codes_padding_ok(packed, bits, lay.kept), f"{name}: non-zero padding bits in codes")
        codes = bitpack.unpack_codes(packed, bits, lay.kept)
        if not lay.sparse:
            out[name] = CompressedTensor(lay, codes=codes, lookup=lookup)
            continue
        idx = _unpack_indices(name, part(f"{name}::idx"), lay)
        out[name] = CompressedTensor(lay, idx=idx, codes=codes.view(lay.num_chunks, lay.k), lookup=lookup)
    return out


def decode_message(
    data: bytes | bytearray | memoryview,
    *,
    spec: Mapping[str, tuple[int, ...] | torch.Size] | None = None,
    expected_window: int | None = None,
    expected_run: str | None = None,
    expected_hotkey: str | None = None,
    expected_codec: SparseLoCoConfig | None = None,
    require_signature: bool = True,
    verify: Callable[[str, bytes, bytes], bool] = verify_signature,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_tensors: int = DEFAULT_MAX_TENSORS,
    max_numel: int = DEFAULT_MAX_NUMEL,
) -> Message:
    """Parse and fully validate a message. Raises :class:`InvalidMessage` for any bad input.

    ``spec`` (name → shape) pins the exact tensor set a peer must send; the ``expected_*``
    arguments pin window, run hash, sender and codec. Nothing proportional to the message is
    allocated before the sizes, structure, expectations and signature have been checked.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidMessage(f"message must be bytes, not {type(data).__name__}")
    _check(len(data) <= max_bytes, f"message is {len(data)} bytes, over the {max_bytes}-byte limit")
    header, start = container.read_header(data, max_header_bytes)
    _check(start % 8 == 0, "header length must keep the data section 8-byte aligned")
    meta = header.get("__metadata__")
    _check(isinstance(meta, dict) and isinstance(meta.get("gauntlet"), str), "missing gauntlet metadata")
    _check(set(meta) <= {"gauntlet", "signature"}, "unexpected metadata keys")
    head = parse_header(meta["gauntlet"], max_tensors, max_numel)

    _check_expectations(head, spec, expected_window, expected_run, expected_hotkey, expected_codec)
    cfg = SparseLoCoConfig(**head.codec)
    layouts, parts = _expected_parts(head.shapes, cfg)
    _check_entries(header, parts, len(data) - start)
    digest = signing_digest(meta["gauntlet"])
    signature = _check_signature(head, meta, digest, require_signature, verify)
    if hashlib.sha256(memoryview(data)[start:]).hexdigest() != head.payload_sha256:
        raise InvalidMessage("payload does not match its sha256 in the header (corrupt or tampered)")

    buf = bytearray(data)  # owned, writable copy that the unpacked tensors view
    tensors = _unpack(buf, start, header, layouts, cfg)
    return Message(head, tensors, digest, signature, len(data), buf)


def _check_expectations(head: MessageHeader, spec: Mapping[str, tuple[int, ...] | torch.Size] | None,
                        window: int | None, run: str | None, hotkey: str | None,
                        codec: SparseLoCoConfig | None) -> None:
    """The header against what the receiver expects (None: anything)."""
    _check(window is None or head.window == window, f"message is for window {head.window}, expected {window}")
    _check(run is None or head.run == run, "message is for another run (run hash differs)")
    _check(hotkey is None or head.hotkey == hotkey, "message was sent by another hotkey")
    _check(codec is None or head.codec == codec_params(codec), "codec parameters differ from the run's")
    if spec is not None:
        want = {n: tuple(int(d) for d in s) for n, s in spec.items()}
        _check(head.shapes.keys() == want.keys(), "message tensors differ from the model's")
        _check(head.shapes == want, "a tensor's shape differs from the model's")


def _check_signature(head: MessageHeader, meta: dict, digest: bytes, required: bool,
                     verify: Callable[[str, bytes, bytes], bool]) -> bytes | None:
    """The signature's bytes after checking it signs ``digest`` for the sender (None: unsigned and allowed)."""
    if "signature" not in meta:
        if required:
            raise SignatureError("message is not signed")
        return None
    sig_hex = meta["signature"]
    if not (isinstance(sig_hex, str) and len(sig_hex) == 128 and set(sig_hex) <= _HEX):
        raise SignatureError("signature must be 128 lowercase hex characters")
    signature = bytes.fromhex(sig_hex)
    if not verify(head.hotkey, digest, signature):
        raise SignatureError(f"signature does not verify for hotkey {head.hotkey}")
    return signature
