"""Pre-tokenised token shards, read in place through memory maps (no re-tokenising).

Accepted files:

- ``.bin``: a flat array of little-endian ``uint16`` or ``uint32`` token ids (``data.token_dtype``),
  as nanoGPT's ``prepare.py`` writes ``train.bin``/``val.bin``; or the llm.c / modded-nanoGPT layout —
  a 256 × int32 header (magic 20240520, version 1, token count) followed by ``uint16`` tokens —
  recognised by its magic number;
- ``.npy``: a 1-D NumPy array of unsigned (or non-negative int32) token ids;
- a directory of such files, or a directory written by ``gauntlet data prepare`` (``meta.json``).

Each file is cut into non-overlapping ``seq_len``-token sequences (a remainder shorter than one
sequence is not used). Files whose name contains ``val`` form the validation split; without any, the
last ``val_fraction`` of the sequences are held out. A sequence index maps to its file by a binary
search over the files' cumulative counts, so drawing a batch costs O(batch), whatever the corpus size.
Every read batch is checked against the vocabulary (a token id ≥ ``vocab_size`` names its file).
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gauntlet.errors import DataError

SUFFIXES = {".bin", ".npy"}
LLMC_MAGIC, LLMC_HEADER_INTS = 20240520, 256
DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


@dataclass(frozen=True)
class TokenFile:
    path: Path
    tokens: np.ndarray  # 1-D memory map of the token ids

    @property
    def dtype(self) -> np.dtype:
        return self.tokens.dtype


def open_token_file(path: Path, token_dtype: str = "uint16") -> TokenFile:
    """Memory-map one shard, checking its size and layout; a DataError names what is wrong."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read the token shard: {exc.strerror or exc}") from None
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable .npy array (truncated?): {exc}") from None
        if arr.ndim != 1 or arr.dtype not in (np.uint16, np.uint32, np.int32):
            raise DataError(f"{path}: expected a 1-D uint16/uint32 array of token ids, found {arr.dtype} "
                            f"with shape {arr.shape}")
        return TokenFile(path, arr)
    with open(path, "rb") as fh:
        raw = fh.read(LLMC_HEADER_INTS * 4)
    head = np.frombuffer(raw[:len(raw) - len(raw) % 4], dtype="<i4")
    if head.size == LLMC_HEADER_INTS and head[0] == LLMC_MAGIC:
        if head[1] != 1:
            raise DataError(f"{path}: llm.c token shard version {head[1]} is not supported (version 1: uint16)")
        count, have = int(head[2]), (size - LLMC_HEADER_INTS * 4) // 2
        if have != count or (size - LLMC_HEADER_INTS * 4) % 2:
            raise DataError(f"{path}: truncated shard: its header declares {count:,} tokens, the file holds "
                            f"{have:,}")
        return TokenFile(path, np.memmap(path, dtype="<u2", mode="r", offset=LLMC_HEADER_INTS * 4, shape=(count,)))
    if token_dtype not in DTYPES:
        raise DataError(f"data.token_dtype must be one of {sorted(DTYPES)}, not {token_dtype!r}")
    item = np.dtype(DTYPES[token_dtype]).itemsize
    if size % item:
        raise DataError(f"{path}: truncated shard: {size:,} bytes is not a whole number of {token_dtype} tokens")
    if size == 0:
        raise DataError(f"{path}: empty token shard")
    return TokenFile(path, np.memmap(path, dtype=np.dtype(DTYPES[token_dtype]).newbyteorder("<"), mode="r"))


def shard_files(source: Path) -> list[Path]:
    """The token shards of a file or directory (sorted by path); [] when it holds none."""
    if source.is_file():
        return [source] if source.suffix in SUFFIXES else []
    return sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in SUFFIXES)


def is_token_source(source: str) -> bool:
    """Whether ``source`` names pre-tokenised shards (files, a folder of them, or a prepared folder)."""
    if source.startswith("hf:") or source == "stdlib":
        return False
    path = Path(source).expanduser()
    return path.exists() and bool(shard_files(path))


def prepared_meta(path: Path) -> dict | None:
    """The `meta.json` of a folder `gauntlet data prepare` wrote (None for anything else)."""
    meta = path / "meta.json" if path.is_dir() else None
    if meta is None or not meta.exists():
        return None
    try:
        data = json.loads(meta.read_text())
        return {k: data[k] for k in ("vocab_size", "dtype", "tokenizer")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{meta}: not a readable prepared-dataset description: {exc}") from None


class TokenShards:
    """Sequences ``[start, stop)`` of the concatenated sequences of some token files."""

    def __init__(self, files: Sequence[TokenFile], seq_len: int, vocab_size: int, start: int = 0,
                 stop: int | None = None) -> None:
        if not files:
            raise DataError("no token shards to read")
        self.files, self.seq_len, self.vocab_size = list(files), seq_len, vocab_size
        for f in self.files:
            limit = np.iinfo(f.dtype).max + 1
            if vocab_size > limit:
                raise DataError(f"{f.path}: {f.dtype} tokens cannot hold a vocabulary of {vocab_size:,} "
                                f"(at most {limit:,}); the shard was written for another tokenizer")
        counts = [f.tokens.shape[0] // seq_len for f in self.files]
        self._ends = np.cumsum(counts).tolist()
        total = self._ends[-1]
        self.start, self.stop = start, total if stop is None else stop
        if not 0 <= self.start < self.stop <= total:
            raise DataError(f"token shards hold {total:,} sequences of {seq_len} tokens: not enough for this split")

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def tokens(self) -> int:
        return len(self) * self.seq_len

    def source_files(self) -> list[Path]:
        return [f.path for f in self.files]

    def token_blocks(self, block: int = 1 << 16) -> Iterator[np.ndarray]:
        """The tokens of sequences ``[start, stop)``, in order, ``block`` sequences at a time."""
        first = 0
        for f, end in zip(self.files, self._ends):
            lo, hi = max(first, self.start), min(end, self.stop)
            for s in range(lo, hi, block):
                yield f.tokens[(s - first) * self.seq_len:(min(s + block, hi) - first) * self.seq_len]
            first = end

    def _locate(self, i: int) -> tuple[TokenFile, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        g = self.start + i
        k = bisect.bisect_right(self._ends, g)
        first = self._ends[k - 1] if k else 0
        return self.files[k], (g - first) * self.seq_len

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """``(len(indices), seq_len)`` int64 token ids, checked against the vocabulary."""
        out = np.empty((len(indices), self.seq_len), dtype=np.int64)
        for row, i in enumerate(indices):
            f, at = self._locate(int(i))
            out[row] = f.tokens[at:at + self.seq_len]
            top = int(out[row].max())
            if top >= self.vocab_size:
                raise DataError(f"{f.path}: token id {top} at token {at + int(out[row].argmax()):,} is outside the "
                                f"vocabulary of {self.vocab_size:,} (wrong tokenizer, or data.vocab_size too small)")
        return torch.from_numpy(out)


def open_token_shards(source: str, seq_len: int, vocab_size: int | None, val_fraction: float,
                      token_dtype: str = "uint16") -> tuple[TokenShards, TokenShards]:
    """(train, validation) sequences of pre-tokenised shards."""
    path = Path(source).expanduser()
    meta = prepared_meta(path)
    if meta is not None:  # written by `gauntlet data prepare`: its tokenizer and dtype are known
        if vocab_size is not None and vocab_size != meta["vocab_size"]:
            raise DataError(f"{path} was prepared with a {meta['vocab_size']:,}-token vocabulary "
                            f"({meta['tokenizer']}), not data.vocab_size={vocab_size:,}")
        vocab_size, token_dtype = int(meta["vocab_size"]), meta["dtype"]
    if vocab_size is None:
        raise DataError(f"{source} holds pre-tokenised shards: set data.vocab_size to the tokenizer's vocabulary "
                        f"size (e.g. 50257 for GPT-2) so the model and the shards agree")
    files = [open_token_file(p, token_dtype) for p in shard_files(path)]
    val = [f for f in files if "val" in f.path.name.lower()]
    train = [f for f in files if "val" not in f.path.name.lower()]
    if not train:
        raise DataError(f"{source}: every shard is a validation shard (its name contains 'val'); add training shards")
    if val:
        return TokenShards(train, seq_len, vocab_size), TokenShards(val, seq_len, vocab_size)
    whole = TokenShards(train, seq_len, vocab_size)
    held = max(1, int(len(whole) * val_fraction))
    if held >= len(whole):
        raise DataError(f"{source}: {len(whole)} sequences of {seq_len} tokens are too few to hold out validation")
    cut = len(whole) - held
    return TokenShards(train, seq_len, vocab_size, 0, cut), TokenShards(train, seq_len, vocab_size, cut, len(whole))


def scan(files: Sequence[TokenFile], block: int = 1 << 24) -> Iterator[tuple[TokenFile, int, int, str]]:
    """For each file: (file, tokens, largest token id, sha256 of its little-endian token bytes), read in
    blocks of ``block`` tokens (O(block) memory whatever the file size)."""
    for f in files:
        digest, top = hashlib.sha256(), -1
        for s in range(0, f.tokens.shape[0], block):
            part = np.ascontiguousarray(f.tokens[s:s + block])
            top = max(top, int(part.max()) if part.size else -1)
            digest.update(part.astype(part.dtype.newbyteorder("<"), copy=False).tobytes())
        yield f, int(f.tokens.shape[0]), top, digest.hexdigest()
