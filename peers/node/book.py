"""The validator's state on disk: the model weights plus the book and bookkeeping.

The metadata holds the last evaluated window, the book (JSON), the sync reference, the record
chain head, the first window whose peer list named peers, and the secret that picks the window's random
evaluation data. On one process it is ``validator.safetensors`` (weights + metadata, written to a
temporary file and renamed); sharded, a DCP directory (:mod:`gauntlet.parallel.checkpoint`). Either
way a crash leaves the old or the new state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from gauntlet.rating.book import PeerRecord
from peers.node.state_files import StateError

NAME = "validator"  # validator.safetensors, or validator.json → validator-<window>/


@dataclass
class ValidatorBook:
    window: int = -1
    records: dict[str, PeerRecord] = field(default_factory=dict)
    sample: list[float] | None = None  # weight sample before the last applied window
    typical_step: float = 0.0
    record_head: str = ""
    first_list: int = -1  # the first window whose list named peers (-1: none yet, lists are open)
    secret: str = ""


def book_meta(book: ValidatorBook) -> dict[str, str]:
    return {"window": str(book.window), "records": json.dumps({h: r.to_json() for h, r in book.records.items()}),
            "sample": json.dumps(book.sample), "typical_step": repr(book.typical_step),
            "record_head": book.record_head, "first_list": str(book.first_list), "secret": book.secret}


def book_from_meta(meta: dict[str, str] | None, where: Path) -> ValidatorBook | None:
    if meta is None:
        return None
    try:
        records = {h: PeerRecord(**r) for h, r in json.loads(meta["records"]).items()}
        return ValidatorBook(int(meta["window"]), records, json.loads(meta["sample"]), float(meta["typical_step"]),
                             meta["record_head"], int(meta.get("first_list", "-1")), meta["secret"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"cannot read the validator state in {where}: {exc}; move it away to start over") from exc
