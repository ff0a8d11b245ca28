"""``gauntlet peer``: flags, wiring and start-up of a peer node."""

from __future__ import annotations

import argparse
from pathlib import Path

from gauntlet.errors import ConfigError
from peers.cli.flags import add_node_arguments, describe_start, node_options
from peers.cli.launch import run_node, stop_on_signals


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "peer", help="run a peer (miner): train on assigned data, publish SparseLoCo updates",
        description="Run a peer node. Each window it trains the shared model on the data assigned to its hotkey, "
                    "uploads a signed, compressed pseudo-gradient to its bucket inside the upload slot, gathers "
                    "everyone's updates, and applies the outer step. State is saved after every window; a restarted "
                    "or late peer catches up by itself.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = add_node_arguments(p, "peer")
    g = groups["storage"]
    g.add_argument("--declare", action="append", default=[], metavar="KEY=VALUE",
                   help="declare a fact for the window records, e.g. --declare hardware=1xH100 --declare "
                        "provider=acme --declare price_usd_h=2.10 (repeatable; signed into every message)")
    g.add_argument("--trust-validator", metavar="HOTKEY",
                   help="use this validator's checkpoints and aggregates to catch up (default: highest stake)")
    g = groups["running"]
    g.add_argument("--behaviour", default="honest", metavar="SPEC",
                   help="run an adversary instead of the honest peer: a built-in name or module:Class "
                        "(simulations and research)")
    g.add_argument("--export-hf", type=Path, metavar="DIR",
                   help="write a Hugging Face save_pretrained export of the model here")
    g.add_argument("--export-every", type=int, default=0, metavar="N",
                   help="refresh the export every N windows (0: only when stopping at --until-window)")
    g.add_argument("--push-to-hub", metavar="REPO", help="push each export to this Hub repo (off by default; "
                   "needs network access and $HF_TOKEN)")
    p.set_defaults(func=run_peer)


def _declared(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--declare {item!r}: use KEY=VALUE, e.g. --declare hardware=1xH100")
        out[key.strip()] = value.strip()
    return out


def run_peer(args: argparse.Namespace) -> int:
    from peers.behaviours import load_behaviour  # deferred: loads torch (`gauntlet --help` stays instant)
    from peers.peer import Peer, PeerOptions

    declared = _declared(args.declare)
    try:
        behaviour = load_behaviour(args.behaviour)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    def start(cfg, identity, chain, store, card, world) -> int:
        opts = node_options(PeerOptions, args, "peer", cfg, card, world, trust_validator=args.trust_validator,
                            export_hf=args.export_hf, declared=declared, export_every=args.export_every,
                            push_to_hub=args.push_to_hub)
        describe_start("peer", identity, chain, store, world)
        with stop_on_signals(Peer(cfg, identity, chain, store, opts, behaviour)) as peer:
            peer.run_forever()
        return 0

    return run_node(args, "peer", start)
