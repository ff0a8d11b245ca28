"""Fixed-length token sequences in memory-mapped shards, and the ``prepare`` step that builds them.

A prepared dataset is a directory::

    meta.json                 what was prepared (source, tokenizer, seq_len, shards); written last
    train-00000.bin ...       uint16 (or uint32) tokens, ``seqs × seq_len`` per shard
    val-00000.bin ...

Documents are tokenized in source order, each followed by the tokenizer's end-of-text id, and the
stream is cut into non-overlapping sequences. Directories are keyed by a hash of the settings and
built in a temporary directory that is renamed into place, so preparing is safe to run from several
processes at once and a finished directory is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gauntlet.config import DataConfig
from gauntlet.data.identity import cached_identity
from gauntlet.data.sources import is_validation, iter_documents
from gauntlet.data.tokenizer import load_tokenizer
from gauntlet.data.tokens import is_token_source, open_token_shards
from gauntlet.errors import ConfigError, DataError

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
SHARD_SEQS = 1 << 18  # sequences per shard file


def dataset_key(cfg: DataConfig) -> str:
    """The cache folder of a text source's preparation: what it reads and how it tokenises."""
    settings = {**cfg.model_dump(mode="json", exclude={"sha256", "path"}), "source": cfg.location}
    text = json.dumps({"v": FORMAT_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _SplitWriter:
    def __init__(self, root: Path, split: str, seq_len: int, dtype: np.dtype) -> None:
        self.root, self.split, self.seq_len, self.dtype = root, split, seq_len, dtype
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.shards: list[dict] = []
        self.tokens = 0

    def add(self, ids: list[int]) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self.pending.append(arr)
        self.pending_tokens += arr.size
        self.tokens += arr.size
        if self.pending_tokens >= SHARD_SEQS * self.seq_len:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.pending:
            return
        stream = np.concatenate(self.pending)
        take = min(stream.size // self.seq_len, SHARD_SEQS) * self.seq_len
        if take:
            name = f"{self.split}-{len(self.shards):05d}.bin"
            stream[:take].tofile(self.root / name)
            self.shards.append({"file": name, "seqs": take // self.seq_len})
        rest = stream[take:]
        self.pending, self.pending_tokens = ([rest], rest.size) if rest.size else ([], 0)
        if final and self.pending_tokens >= self.seq_len:
            self._flush(final=True)

    def close(self) -> list[dict]:
        self._flush(final=True)
        return self.shards


def prepare(cfg: DataConfig, cache_root: str | Path, target: str | Path | None = None) -> Path:
    """Build (or reuse) the prepared dataset for ``cfg``: in ``target`` if given, else under
    ``cache_root`` (which also caches trained tokenizers); returns its directory. The shards are
    written in a temporary sibling folder that is renamed into place only when complete."""
    cache_root = Path(cache_root)
    target = Path(target) if target is not None else cache_root / dataset_key(cfg)
    if (target / "meta.json").exists():
        return target
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"{target} exists and is not a prepared dataset: choose an empty or new folder")
    cache_root.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    corpus_id = f"{cfg.location}|{cfg.val_fraction}|{cfg.max_tokens}"
    train_texts = (t for d, t in iter_documents(cfg.location) if not is_validation(d, cfg.val_fraction))
    tokenizer = load_tokenizer(cfg.tokenizer, cache_root / "tokenizers", train_texts, corpus_id)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        writers = {s: _SplitWriter(work, s, cfg.seq_len, dtype) for s in ("train", "val")}
        docs, batch = 0, []

        def flush_batch() -> None:
            for (doc_id, _), ids in zip(batch, tokenizer.encode_batch([t for _, t in batch])):
                writers["val" if is_validation(doc_id, cfg.val_fraction) else "train"].add(ids + [tokenizer.eos_id])
            batch.clear()

        for doc in iter_documents(cfg.location):
            batch.append(doc)
            docs += 1
            if len(batch) == 256:
                flush_batch()
                log.info("prepared %d documents, %d tokens", docs, sum(w.tokens for w in writers.values()))
            if cfg.max_tokens and sum(w.tokens for w in writers.values()) >= cfg.max_tokens:
                break
        flush_batch()
        splits = {s: w.close() for s, w in writers.items()}
        if not splits["train"] or not splits["val"]:
            raise ConfigError(f"data source {cfg.location!r} is too small for seq_len {cfg.seq_len}: "
                              f"it yields no full {'training' if not splits['train'] else 'validation'} sequence")
        meta = {"version": FORMAT_VERSION, "config": cfg.model_dump(mode="json"), "tokenizer": tokenizer.name,
                "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id, "seq_len": cfg.seq_len,
                "dtype": dtype.name, "documents": docs, "splits": splits}
        (work / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            if target.exists():
                target.rmdir()  # an empty folder the user named
            os.rename(work, target)
        except OSError:  # another process finished first: use its result
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


class TokenDataset:
    """The sequences of one split of a prepared dataset, memory-mapped."""

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root, self.split = Path(root), split
        try:
            self.meta = json.loads((self.root / "meta.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.root} is not a prepared dataset (meta.json unreadable): {exc}") from None
        if split not in self.meta["splits"]:
            raise ConfigError(f"prepared dataset {self.root} has no split {split!r}")
        self.seq_len = int(self.meta["seq_len"])
        self.vocab_size = int(self.meta["vocab_size"])
        dtype = np.dtype(self.meta["dtype"])
        self._shards = [np.memmap(self.root / s["file"], dtype=dtype, mode="r", shape=(s["seqs"], self.seq_len))
                        for s in self.meta["splits"][split]]
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def source_files(self) -> list[Path]:
        return [self.root / "meta.json"] + [self.root / s["file"] for s in self.meta["splits"][self.split]]

    def token_blocks(self, block: int = 1 << 16):
        """The split's tokens, in order, ``block`` sequences at a time."""
        for shard in self._shards:
            for s in range(0, len(shard), block):
                yield shard[s:s + block].reshape(-1)

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """``(len(indices), seq_len)`` int64 token ids."""
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        for row, i in enumerate(indices):
            if not 0 <= i < len(self):
                raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
            shard = int(np.searchsorted(self._starts, i, side="right")) - 1
            out[row] = self._shards[shard][i - self._starts[shard]]
        return torch.from_numpy(out)


def open_dataset(cfg: DataConfig, cache_root: str | Path):
    """The (train, validation) sequences of ``cfg.location`` (the node's copy, else the run's source):
    pre-tokenised shards are read in place (:mod:`gauntlet.data.tokens`); text sources are tokenised once
    into the cache (:func:`prepare`). With ``cfg.sha256`` set, data whose identity differs is a DataError."""
    if is_token_source(cfg.location):
        splits = open_token_shards(cfg.location, cfg.seq_len, cfg.vocab_size, cfg.val_fraction, cfg.token_dtype)
    else:
        root = prepare(cfg, cache_root)
        splits = TokenDataset(root, "train"), TokenDataset(root, "val")
    if cfg.sha256 is not None:
        found = cached_identity(*splits, cache_root)
        if found != cfg.sha256:
            raise DataError(f"the data at {cfg.location} is not this run's: its identity (data.sha256) is {found}, the "
                            f"run's is {cfg.sha256}. Prepare the run's corpus ({cfg.source}, tokenizer {cfg.tokenizer}, "
                            f"seq_len {cfg.seq_len}) or point data.path at an exact copy of it")
    return splits
