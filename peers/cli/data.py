"""``gauntlet data``: turn text into token shards, and look inside token shards.

- ``gauntlet data prepare SOURCE --out DIR``: tokenise text, JSONL, parquet or a saved Hugging Face
  dataset into ``DIR`` (``meta.json`` + ``train-*.bin`` / ``val-*.bin``; written in a temporary
  folder and renamed into place when complete). ``data.source=DIR`` then trains on it in place.
- ``gauntlet data inspect PATH``: vocabulary, tokens, sequences, largest token id and a checksum of
  pre-tokenised shards (``.bin``, ``.npy``, llm.c shards, or a prepared folder).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

from gauntlet.config import DataConfig
from gauntlet.errors import DataError


def _prepare(args: argparse.Namespace) -> int:
    from gauntlet.data import TokenDataset, prepare  # deferred: loads torch (`gauntlet --help` stays instant)
    from gauntlet.data.identity import cached_identity
    from peers.node.data import default_data_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = DataConfig(source=args.source, tokenizer=args.tokenizer, seq_len=args.seq_len,
                     val_fraction=args.val_fraction, max_tokens=args.max_tokens)
    out = prepare(cfg, args.data_dir or default_data_dir(), target=args.out)
    meta = json.loads((out / "meta.json").read_text())
    tokens = {s: sum(x["seqs"] for x in shards) * meta["seq_len"] for s, shards in meta["splits"].items()}
    print(f"prepared {out}: {meta['documents']:,} documents, {tokens['train']:,} training and {tokens['val']:,} "
          f"validation tokens, vocabulary {meta['vocab_size']:,} ({meta['tokenizer']}), {meta['dtype']}")
    identity = cached_identity(TokenDataset(out, "train"), TokenDataset(out, "val"), args.data_dir or default_data_dir())
    print(f"identity (data.sha256 in a run manifest): {identity}")
    print(f"train on it with: --set data.path={out}  (or data.source={out} for a run of your own)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from gauntlet.data.tokens import open_token_file, prepared_meta, scan, shard_files  # deferred: loads torch (`gauntlet --help` stays instant)

    path = Path(args.path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist")
    meta = prepared_meta(path)
    dtype = meta["dtype"] if meta else args.token_dtype
    files = [open_token_file(p, dtype) for p in shard_files(path)]
    if not files:
        raise DataError(f"{path} holds no token shards (.bin, .npy)")
    rows, whole, top, total = [], hashlib.sha256(), -1, 0
    for f, count, largest, digest in scan(files):
        rows.append({"file": str(f.path.relative_to(path) if path.is_dir() else f.path.name), "dtype": str(f.dtype),
                     "tokens": count, "max_token_id": largest, "sha256": digest})
        whole.update(bytes.fromhex(digest))
        top, total = max(top, largest), total + count
        if not args.json:
            print(f"  {rows[-1]['file']}: {count:,} {f.dtype} tokens, largest id {largest:,}", file=sys.stderr)
    seq_len = args.seq_len or (json.loads((path / "meta.json").read_text())["seq_len"] if meta else 128)
    vocab = meta["vocab_size"] if meta else args.vocab_size
    summary = {"path": str(path), "files": rows, "tokens": total, "seq_len": seq_len,
               "sequences": sum(r["tokens"] // seq_len for r in rows), "max_token_id": top,
               "vocab_size": vocab, "tokenizer": meta["tokenizer"] if meta else None,
               "checksum": whole.hexdigest()}
    if vocab is not None and top >= vocab:
        summary["problem"] = f"token id {top} is outside the vocabulary of {vocab}"
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{path}: {len(rows)} shard(s), {total:,} tokens = {summary['sequences']:,} sequences of {seq_len}")
        print(f"vocabulary: {vocab if vocab is not None else f'unknown (at least {top + 1:,})'}"
              f"{' (' + summary['tokenizer'] + ')' if summary['tokenizer'] else ''}; largest token id {top:,}")
        print(f"checksum (sha256 of the shards' sha256s, in order): {summary['checksum']}")
        if "problem" in summary:
            print(f"problem: {summary['problem']}")
    return 2 if "problem" in summary else 0


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="prepare token shards from text, or inspect token shards",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prep = cmds.add_parser("prepare", help="tokenise text/JSONL/parquet/a saved HF dataset into token shards")
    prep.add_argument("source", help="a file or folder (.txt .md .py .jsonl .parquet .arrow, a saved Hugging Face "
                                     "dataset), stdlib, or hf:NAME[:SPLIT]")
    prep.add_argument("--out", type=Path, required=True, help="the folder to write (new or empty)")
    prep.add_argument("--tokenizer", default="bytes", help="bytes, bpe:VOCAB (trained on the source), or a Hugging "
                                                           "Face tokenizer name/path")
    prep.add_argument("--seq-len", type=int, default=128, help="tokens per training sequence (default 128)")
    prep.add_argument("--val-fraction", type=float, default=0.05, help="share of documents held out (default 0.05)")
    prep.add_argument("--max-tokens", type=int, default=None, help="stop after this many tokens")
    prep.add_argument("--data-dir", type=Path, help="cache of trained tokenizers (default ~/.cache/gauntlet/data)")
    prep.set_defaults(func=_prepare)
    ins = cmds.add_parser("inspect", help="vocabulary, tokens, sequences and checksum of token shards")
    ins.add_argument("path", help="a .bin/.npy shard, a folder of them, or a prepared folder")
    ins.add_argument("--seq-len", type=int, default=None, help="sequence length to count (default: the prepared "
                                                               "folder's, else 128)")
    ins.add_argument("--vocab-size", type=int, default=None, help="check every token id against this vocabulary")
    ins.add_argument("--token-dtype", choices=["uint16", "uint32"], default="uint16",
                     help="width of flat .bin tokens (default uint16; .npy and llm.c shards say theirs)")
    ins.add_argument("--json", action="store_true", help="print one JSON object")
    ins.set_defaults(func=_inspect)
