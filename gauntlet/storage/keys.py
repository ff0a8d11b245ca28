"""The object-key layout: the one place that says where every artefact lives.

Every key starts with ``runs/{run}/``; windows are zero-padded to 10 digits so that lexical order
(what ``list`` returns) is numeric order. Peers write into their own bucket; validators into theirs.

====================  ==================================================  ==========
kind                  key                                                 written by
====================  ==================================================  ==========
message               runs/R/windows/W/messages/HOTKEY.safetensors        peer
fingerprint           runs/R/windows/W/fingerprints/HOTKEY.json           peer
replay                runs/R/windows/W/replay.json                        validator
peer_list             runs/R/windows/W/peers.json                         validator
record                runs/R/windows/W/record.json                        validator
checkpoint            runs/R/checkpoints/W.safetensors                    validator
manifest              manifests/RUN_HASH.json                             subnet owner
====================  ==================================================  ==========
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAFE = re.compile(r"[A-Za-z0-9._=-]{1,128}")
_WINDOW_DIGITS = 10


def _seg(value: str, what: str) -> str:
    if not _SAFE.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{what} {value!r} cannot be part of an object key")
    return value


def _win(window: int) -> str:
    if not 0 <= window < 10**_WINDOW_DIGITS:
        raise ValueError(f"window {window} out of range")
    return f"{window:0{_WINDOW_DIGITS}d}"


def run_prefix(run: str) -> str:
    return f"runs/{_seg(run, 'run')}/"


def window_prefix(run: str, window: int) -> str:
    return f"{run_prefix(run)}windows/{_win(window)}/"


def message(run: str, window: int, hotkey: str) -> str:
    return f"{window_prefix(run, window)}messages/{_seg(hotkey, 'hotkey')}.safetensors"


def fingerprint(run: str, window: int, hotkey: str) -> str:
    return f"{window_prefix(run, window)}fingerprints/{_seg(hotkey, 'hotkey')}.json"


def replay(run: str, window: int) -> str:
    return f"{window_prefix(run, window)}replay.json"


def peer_list(run: str, window: int) -> str:
    return f"{window_prefix(run, window)}peers.json"


def record(run: str, window: int) -> str:
    return f"{window_prefix(run, window)}record.json"


def manifest(run_hash: str) -> str:
    """A run's signed manifest, in its owner's bucket (outside ``runs/``: retention never deletes it)."""
    return f"manifests/{_seg(run_hash, 'run hash')}.json"


def checkpoint(run: str, window: int) -> str:
    return f"{run_prefix(run)}checkpoints/{_win(window)}.safetensors"


@dataclass(frozen=True)
class ParsedKey:
    kind: str
    run: str
    window: int
    hotkey: str | None = None


_PATTERNS = [
    ("message", re.compile(r"runs/([^/]+)/windows/(\d{10})/messages/([^/]+)\.safetensors")),
    ("fingerprint", re.compile(r"runs/([^/]+)/windows/(\d{10})/fingerprints/([^/]+)\.json")),
    ("replay", re.compile(r"runs/([^/]+)/windows/(\d{10})/replay\.json")),
    ("peer_list", re.compile(r"runs/([^/]+)/windows/(\d{10})/peers\.json")),
    ("record", re.compile(r"runs/([^/]+)/windows/(\d{10})/record\.json")),
    ("checkpoint", re.compile(r"runs/([^/]+)/checkpoints/(\d{10})\.safetensors")),
]


def parse(key: str) -> ParsedKey | None:
    """The kind, run, window (and hotkey) of a key of this layout; None for any other key."""
    for kind, pattern in _PATTERNS:
        m = pattern.fullmatch(key)
        if m:
            return ParsedKey(kind, m.group(1), int(m.group(2)), m.group(3) if m.lastindex == 3 else None)
    return None
