"""Signed dense artefacts: the checkpoints validators publish.

An artefact is a safetensors file of named fp32/bf16 tensors whose metadata carries a JSON header
(``kind``, run hash, window, signer hotkey, tensor names/shapes/dtypes, sha256 of the data) and the
signer's sr25519 signature of ``b"gauntlet-artefact-v1:" + sha256(header)``. Readers check size,
header, signature (against the hotkeys they trust), hash and the model's shapes before loading
tensors — with the ``safetensors`` loader, never pickle.

- ``checkpoint`` at window ``w``: the weights with every window up to and including ``w`` applied.
  (What a window applied travels as a replay list: :mod:`peers.network.replay`.)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path

import safetensors.torch
import torch

from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.identity import Identity, verify_signature
from gauntlet.sparseloco import container

PREFIX = b"gauntlet-artefact-v1:"
KINDS = ("checkpoint",)


def _digest(header_json: str) -> bytes:
    return PREFIX + hashlib.sha256(header_json.encode()).digest()


def encode_artefact(kind: str, tensors: Mapping[str, torch.Tensor], *, run: str, window: int,
                    signer: Identity) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"artefact kind must be one of {KINDS}")
    cpu = {n: t.detach().cpu().contiguous() for n, t in sorted(tensors.items())}
    body = safetensors.torch.save(cpu)
    _, start = container.read_header(body, 1 << 30)
    header_json = _header_json(kind, cpu, run, window, signer, hashlib.sha256(body[start:]).hexdigest())
    metadata = {"gauntlet-artefact": header_json, "signature": signer.sign(_digest(header_json)).hex()}
    return safetensors.torch.save(cpu, metadata=metadata)


_HASH_SLOT, _SIGNATURE_SLOT = "0" * 64, "f" * 128  # filled in place once the data is written


def write_artefact(path: Path, kind: str, tensors: Mapping[str, torch.Tensor], *, run: str, window: int,
                   signer: Identity) -> int:
    """:func:`encode_artefact` written to ``path`` without a copy of the file in memory: the tensors
    go to disk from their own memory (one host copy of each when they live on a GPU), the data
    section's hash is read back in chunks, and the hash and signature are written over placeholders
    of the same length. Returns the file's size."""
    if kind not in KINDS:
        raise ValueError(f"artefact kind must be one of {KINDS}")
    cpu = {n: t.detach().cpu().contiguous() for n, t in sorted(tensors.items())}
    header_json = _header_json(kind, cpu, run, window, signer, _HASH_SLOT)
    safetensors.torch.save_file(cpu, str(path), metadata={"gauntlet-artefact": header_json,
                                                          "signature": _SIGNATURE_SLOT})
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        head = fh.read(size)
        digest = hashlib.sha256()
        while chunk := fh.read(16 << 20):
            digest.update(chunk)
        signed_json = header_json.replace(_HASH_SLOT, digest.hexdigest())
        signature = signer.sign(_digest(signed_json)).hex()
        if head.count(_HASH_SLOT.encode()) != 1 or head.count(_SIGNATURE_SLOT.encode()) != 1:
            raise ValueError("artefact header placeholders are not unique")  # cannot happen with hex names
        fh.seek(8)
        fh.write(head.replace(_HASH_SLOT.encode(), digest.hexdigest().encode())
                 .replace(_SIGNATURE_SLOT.encode(), signature.encode()))
        fh.flush()
        os.fsync(fh.fileno())
        return fh.seek(0, os.SEEK_END)


def _header_json(kind: str, cpu: Mapping[str, torch.Tensor], run: str, window: int, signer: Identity,
                 payload_sha256: str) -> str:
    header = {"v": 1, "kind": kind, "run": run, "window": int(window), "hotkey": signer.hotkey,
              "tensors": [[n, str(t.dtype).removeprefix("torch."), list(t.shape)] for n, t in cpu.items()],
              "payload_sha256": payload_sha256}
    return json.dumps(header, sort_keys=True, separators=(",", ":"))


def _checked_header(raw: dict, *, kind: str, run: str, window: int | None, trusted: Collection[str],
                    spec: Mapping[str, tuple[int, ...]]) -> dict:
    """The signed gauntlet header of a safetensors header ``raw``, checked: kind, run, window, signer,
    signature, and tensors (in both headers) shaped like the model. The payload hash is the caller's."""
    meta = raw.get("__metadata__") or {}
    header_json, sig_hex = meta.get("gauntlet-artefact"), meta.get("signature")
    if not isinstance(header_json, str) or not isinstance(sig_hex, str):
        raise SignatureError("artefact is not signed")
    try:
        header = json.loads(header_json)
        signature = bytes.fromhex(sig_hex)
    except (json.JSONDecodeError, ValueError):
        raise InvalidMessage("artefact header or signature is malformed") from None
    if not isinstance(header, dict) or header.get("v") != 1 or header.get("kind") != kind:
        raise InvalidMessage(f"not a version-1 {kind} artefact")
    if header.get("run") != run or (window is not None and header.get("window") != window):
        raise InvalidMessage(f"artefact is for run {header.get('run')} window {header.get('window')}")
    if header.get("hotkey") not in trusted:
        raise SignatureError(f"artefact signed by {header.get('hotkey')}, who is not a trusted validator")
    if not verify_signature(header["hotkey"], _digest(header_json), signature):
        raise SignatureError("artefact signature does not verify")
    want = sorted([n, list(s)] for n, s in spec.items())
    got = sorted([n, s] for n, _, s in header.get("tensors", []))
    if got != want or any(d not in ("float32", "bfloat16") for _, d, _ in header["tensors"]):
        raise InvalidMessage("artefact tensors do not match the model")
    entries = {n: e for n, e in raw.items() if n != "__metadata__"}
    if sorted(entries) != sorted(spec) or any(not isinstance(e, dict) or e.get("shape") != list(spec[n])
                                              or e.get("dtype") not in ("F32", "BF16") for n, e in entries.items()):
        raise InvalidMessage("artefact tensors do not match the header")
    return header


def decode_artefact(data: bytes, *, kind: str, run: str, window: int | None, trusted: Collection[str],
                    spec: Mapping[str, tuple[int, ...]], max_bytes: int) -> tuple[int, dict[str, torch.Tensor]]:
    """Validate an artefact and return ``(window, tensors)``; InvalidMessage/SignatureError otherwise."""
    if len(data) > max_bytes:
        raise InvalidMessage(f"artefact is {len(data)} bytes, over the {max_bytes}-byte limit")
    raw, start = container.read_header(data, 16 << 20)
    header = _checked_header(raw, kind=kind, run=run, window=window, trusted=trusted, spec=spec)
    if hashlib.sha256(memoryview(data)[start:]).hexdigest() != header.get("payload_sha256"):
        raise InvalidMessage("artefact payload does not match its hash")
    try:
        tensors = safetensors.torch.load(bytes(data))
    except Exception as exc:  # safetensors' own error types
        raise InvalidMessage(f"artefact payload is not valid safetensors: {exc}") from None
    if sorted(tensors) != sorted(spec) or any(tuple(tensors[n].shape) != tuple(spec[n]) for n in spec):
        raise InvalidMessage("artefact tensors do not match the header")
    return int(header["window"]), tensors


class ArtefactTensors(Mapping):
    """The tensors of a checked artefact file, each read from the file when it is asked for (one
    tensor in memory at a time, whatever the model's size)."""

    def __init__(self, path: Path, names: Collection[str]) -> None:
        self.path, self.names = Path(path), sorted(names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.names:
            raise KeyError(name)
        try:
            with safetensors.safe_open(str(self.path), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as exc:  # safetensors' own error types
            raise InvalidMessage(f"artefact payload is not valid safetensors: {exc}") from None

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def open_artefact(path: Path, *, kind: str, run: str, window: int | None, trusted: Collection[str],
                  spec: Mapping[str, tuple[int, ...]]) -> tuple[int, ArtefactTensors]:
    """:func:`decode_artefact` for an artefact in a local file, in bounded memory: the header is read
    and checked, the payload hashed in chunks, and the tensors come one at a time from the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            size = int.from_bytes(head, "little") if len(head) == 8 else 0
            if size > 16 << 20:
                raise InvalidMessage(f"artefact header declares {size} bytes, over the {16 << 20}-byte limit")
            raw, _ = container.read_header(head + fh.read(size), 16 << 20)
            header = _checked_header(raw, kind=kind, run=run, window=window, trusted=trusted, spec=spec)
            digest = hashlib.sha256()
            while chunk := fh.read(16 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidMessage(f"artefact file {path} cannot be read: {exc.strerror or exc}") from None
    if digest.hexdigest() != header.get("payload_sha256"):
        raise InvalidMessage("artefact payload does not match its hash")
    return int(header["window"]), ArtefactTensors(path, spec)
