"""The validator's state on disk: model weights plus the book and bookkeeping, one atomic file.

``validator.safetensors`` holds the weights (``model.*``); its metadata holds the last evaluated
window, the book (JSON), the sync reference, the record chain head, the peer list for the next
window, and the secret that picks the window's random evaluation data. Written to a temporary
file, flushed and renamed, so a crash leaves the old or the new state.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import safetensors.torch
import torch

from gauntlet.rating.book import PeerRecord
from peers.state import StateError

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
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{FILE}.partial"
    with open(tmp, "wb") as fh:
        fh.write(safetensors.torch.save(tensors, metadata=meta))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, run_dir / FILE)


def load(run_dir: Path, model: torch.nn.Module) -> ValidatorBook | None:
    path = run_dir / FILE
    if not path.exists():
        return None
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        records = {h: PeerRecord(**r) for h, r in json.loads(meta["records"]).items()}
        book = ValidatorBook(int(meta["window"]), records, json.loads(meta["sample"]), float(meta["typical_step"]),
                             meta["record_head"], json.loads(meta["listed"]), meta["secret"])
    except Exception as exc:  # safetensors and JSON raise several types
        raise StateError(f"cannot read {path}: {exc}; move it away to start over") from exc
    with torch.no_grad():
        for name, p in model.named_parameters():
            src = tensors.get(f"model.{name}")
            if src is None or src.shape != p.shape:
                raise StateError(f"{path} does not match this model (tensor {name})")
            p.copy_(src)
    return book
