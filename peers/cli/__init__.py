"""The ``gauntlet`` command line: one module per command in this package; flags that nodes share
are in :mod:`peers.cli.flags`, starting a node (one process or torchrun) in :mod:`peers.cli.launch`.

- ``gauntlet simulate``: a whole network on this machine, then a report (``gauntlet simulate --help``).
- ``gauntlet peer``: run a peer node (see ``gauntlet peer --help``).
- ``gauntlet validate``: run a validator (see ``gauntlet validate --help``).
- ``gauntlet run publish|show``: publish the run manifest (a subnet owner), or print it.
- ``gauntlet doctor``: check a node's set-up (keys, bucket, chain, clock, disk, device, data).
- ``gauntlet data prepare|inspect``: tokenise text into token shards; look inside token shards.
- ``gauntlet inspect FILE``: decode and fully validate a peer message (the wire format), and show
  its header and what each tensor carries. Exit status 0 for a valid message, 2 for an invalid one.
"""

from __future__ import annotations

import argparse
import sys

from gauntlet import __version__
from gauntlet.errors import GauntletError
from gauntlet.extras import install_hint
from peers.cli import data, doctor, inspect, peer, run, simulate, validate

COMMANDS = (inspect, simulate, peer, validate, run, data, doctor)  # one module per command, in --help order


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gauntlet",
        description="Permissionless, incentivised, communication-efficient LLM training (SparseLoCo + Gauntlet).",
    )
    ap.add_argument("--version", action="version", version=f"gauntlet {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GauntletError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:  # an optional package the command needs is not installed
        hint = install_hint(exc)
        if hint is None:
            raise
        print(f"error: gauntlet {args.command}: {hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

