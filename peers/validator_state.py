"""The validator's state on disk: model weights plus the book and bookkeeping, one atomic file.

``validator.safetensors`` holds the weights (``model.*``); its metadata holds the last evaluated
window, the book (JSON), the sync reference, the record chain head, the peer list for the next
window, and the secret that picks the window's random evaluation data. Written to a temporary
file, flushed and renamed, so a crash leaves the old or the new state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch

from gauntlet.rating.book import PeerRecord
from peers.state import StateError, load_weights, read_state_file, write_atomic

FILE = "validator.safetensors"


@dataclass
class ValidatorBook:
    window: int = -1
    records: dict[str, PeerRecord] = field(default_factory=dict)
    sample: list[float] | None = None  # weight sample before the last applied window
    typical_step: float = 0.0
    record_head: str = ""
    listed: dict | None = None  # {"window": W, "peers": [...], "reserves": [...]}
    secret: str = ""


def save(run_dir: Path, model: torch.nn.Module, book: ValidatorBook) -> None:
    tensors = {f"model.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    meta = {"window": str(book.window), "records": json.dumps({h: r.to_json() for h, r in book.records.items()}),
            "sample": json.dumps(book.sample), "typical_step": repr(book.typical_step),
            "record_head": book.record_head, "listed": json.dumps(book.listed), "secret": book.secret}
    write_atomic(run_dir / FILE, safetensors.torch.save(tensors, metadata=meta))


def load(run_dir: Path, model: torch.nn.Module) -> ValidatorBook | None:
    path = run_dir / FILE
    found = read_state_file(path)
    if found is None:
        return None
    meta, tensors = found
    try:
        records = {h: PeerRecord(**r) for h, r in json.loads(meta["records"]).items()}
        book = ValidatorBook(int(meta["window"]), records, json.loads(meta["sample"]), float(meta["typical_step"]),
                             meta["record_head"], json.loads(meta["listed"]), meta["secret"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}; move it away to start over") from exc
    load_weights(model, tensors, path)
    return book
