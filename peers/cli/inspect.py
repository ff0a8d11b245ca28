"""``gauntlet inspect FILE``: decode and fully validate a peer message (the wire format), and show its
header and what each tensor carries. Exit status 0 for a valid message, 2 for an invalid one."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from gauntlet.errors import InvalidMessage


def add_parser(sub: argparse._SubParsersAction) -> None:
    ins = sub.add_parser("inspect", help="validate a peer message file and show what it carries",
                         description="Decode and fully validate a peer message (signature, sizes, indices, "
                                     "lookup tables), then print its header and per-tensor statistics.")
    ins.add_argument("file", help="path of the message (a .safetensors file as peers upload it)")
    ins.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ins.add_argument("--allow-unsigned", action="store_true",
                     help="accept a message without signature (embedded trainers send those)")
    ins.add_argument("--run", help="require this run hash")
    ins.add_argument("--window", type=int, help="require this window")
    ins.add_argument("--max-bytes", type=int, default=1 << 30, help="refuse larger files (default 1 GiB)")
    ins.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from gauntlet.sparseloco.wire import decode_message  # deferred: loads torch (`gauntlet --help` stays instant)

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        msg = decode_message(data, require_signature=not args.allow_unsigned, expected_run=args.run,
                             expected_window=args.window, max_bytes=args.max_bytes)
    except InvalidMessage as exc:
        print(f"invalid message: {exc}", file=sys.stderr)
        return 2
    rows = []
    for name, ct in msg.tensors.items():
        lay = ct.layout
        vals = ct.values()
        rows.append({
            "name": name, "shape": list(lay.shape), "kind": "sparse" if lay.sparse else "dense",
            "chunks": lay.num_chunks, "kept": lay.kept, "density": round(lay.kept / lay.numel, 6),
            "l2_norm": float(vals.norm()), "max_abs": float(vals.abs().max()),
        })
    h = msg.header
    summary = {
        "bytes": msg.nbytes, "window": h.window, "hotkey": h.hotkey, "run": h.run, "signed": msg.signature is not None,
        "codec": h.codec, "params": sum(math.prod(r["shape"]) for r in rows),
        "extra": h.extra, "tensors": rows,
    }
    summary["bytes_per_param"] = round(msg.nbytes / summary["params"], 6)
    if args.json:
        print(json.dumps(summary))
        return 0
    from rich.console import Console  # deferred: rich comes with the [node] extra
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{path}[/]: {msg.nbytes:,} bytes, window {h.window}, run {h.run}")
    console.print(f"sender {h.hotkey} ({'signature verified' if msg.signature else 'unsigned'}), "
                  f"{summary['params']:,} parameters, {summary['bytes_per_param']} B/param, codec {h.codec}")
    table = Table("tensor", "shape", "kind", "kept", "density", "L2 norm", "max |v|")
    for r in rows:
        table.add_row(r["name"], "×".join(map(str, r["shape"])), r["kind"], f"{r['kept']:,}",
                      f"{r['density']:.4%}", f"{r['l2_norm']:.4g}", f"{r['max_abs']:.4g}")
    console.print(table)
    return 0
