"""Tokenizers: byte-level (no training, vocabulary 256), a byte-level BPE trained on the corpus and
cached, or any Hugging Face tokenizer. All expose ``name``, ``vocab_size``, ``eos_id`` and
``encode_batch(texts) -> list[list[int]]``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from gauntlet.errors import ConfigError


class ByteTokenizer:
    """UTF-8 bytes as tokens. Documents are separated by byte 0 (NUL), which text never contains."""

    name = "bytes"
    vocab_size = 256
    eos_id = 0

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 < int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizers`` or ``transformers`` tokenizer behind the same small interface."""

    def __init__(self, name: str, tokenizer, eos_id: int) -> None:
        self.name = name
        self._tok = tokenizer
        self.eos_id = eos_id
        self.vocab_size = tokenizer.get_vocab_size() if hasattr(tokenizer, "get_vocab_size") else len(tokenizer)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if hasattr(self._tok, "encode_batch"):
            return [e.ids for e in self._tok.encode_batch(texts)]
        return self._tok(texts, add_special_tokens=False)["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> HFTokenizer:
    """Train a byte-level BPE on ``texts`` and save it as ``path`` (tokenizer.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # deferred: byte tokens need none

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    tok.save(str(tmp))
    tmp.replace(path)
    return HFTokenizer(f"bpe:{vocab_size}", tok, tok.token_to_id("<|endoftext|>"))


def load_tokenizer(spec: str, cache_dir: Path, corpus: Iterable[str] | None = None, corpus_id: str = "") -> object:
    """``bytes``; ``bpe:VOCAB`` (trained on ``corpus`` once, then loaded from ``cache_dir``); or a
    Hugging Face tokenizer name or path."""
    if spec == "bytes":
        return ByteTokenizer()
    if spec.startswith("bpe:"):
        try:
            vocab = int(spec[4:])
        except ValueError:
            raise ConfigError(f"tokenizer {spec!r}: use bpe:VOCAB_SIZE, e.g. bpe:4096") from None
        if not 300 <= vocab <= 65535:
            raise ConfigError(f"tokenizer {spec!r}: vocabulary must be within 300..65535")
        key = hashlib.sha256(f"{corpus_id}|{vocab}".encode()).hexdigest()[:16]
        path = Path(cache_dir) / f"bpe-{vocab}-{key}.json"
        if path.exists():
            from tokenizers import Tokenizer  # deferred: byte tokens need none

            tok = Tokenizer.from_file(str(path))
            return HFTokenizer(spec, tok, tok.token_to_id("<|endoftext|>"))
        if corpus is None:
            raise ConfigError(f"tokenizer {spec!r} is not trained yet and no corpus was given")
        return train_bpe(corpus, vocab, path)
    try:
        from transformers import AutoTokenizer  # deferred: the [node] extra, for hub tokenizers only

        tok = AutoTokenizer.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load tokenizer {spec!r}: {exc}") from None
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    return HFTokenizer(spec, tok, eos)
