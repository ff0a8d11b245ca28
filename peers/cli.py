"""The ``gauntlet`` command line.

Subcommands available in this version:

- ``gauntlet simulate``: a whole network on this machine, then a report (``gauntlet simulate --help``).
- ``gauntlet peer``: run a peer node (see ``gauntlet peer --help``).
- ``gauntlet validate``: run a validator (see ``gauntlet validate --help``).
- ``gauntlet doctor``: check a node's set-up (keys, bucket, chain, clock, disk, device, data).
- ``gauntlet data prepare|inspect``: tokenise text into token shards; look inside token shards.
- ``gauntlet inspect FILE``: decode and fully validate a peer message (the wire format), and show
  its header and what each tensor carries. Exit status 0 for a valid message, 2 for an invalid one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from gauntlet import __version__
from gauntlet.errors import GauntletError, InvalidMessage


def _inspect(args: argparse.Namespace) -> int:
    from gauntlet.sparseloco.wire import decode_message

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
    from rich.console import Console
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gauntlet",
        description="Permissionless, incentivised, communication-efficient LLM training (SparseLoCo + Gauntlet).",
    )
    ap.add_argument("--version", action="version", version=f"gauntlet {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    ins.set_defaults(func=_inspect)
    from peers.data_cli import add_parser as add_data
    from peers.doctor_cli import add_parser as add_doctor
    from peers.peer_cli import add_parser as add_peer
    from peers.simulate_cli import add_parser as add_simulate
    from peers.validator_cli import add_parser as add_validator

    add_simulate(sub)
    add_peer(sub)
    add_validator(sub)
    add_data(sub)
    add_doctor(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:  # an optional package the command needs is not installed
        from gauntlet.extras import install_hint

        hint = install_hint(exc)
        if hint is None:
            raise
        print(f"error: gauntlet {args.command}: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
