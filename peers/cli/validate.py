"""``gauntlet validate``: flags, wiring and start-up of a validator node."""

from __future__ import annotations

import argparse

from gauntlet.errors import ConfigError
from peers.cli.flags import add_node_arguments, describe_start, node_options
from peers.cli.launch import run_node, stop_on_signals


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="run a validator: score peers with Gauntlet, set weights, publish aggregates",
        description="Run a validator. After each window's upload slot it checks every peer (presence, validity, "
                    "signature, sync), detects copies, loss-tests a sample of updates, updates OpenSkill ratings, "
                    "sets weights on chain every K windows, and publishes the aggregate, the next peer list, "
                    "checkpoints and a signed, hash-chained window record. Every score is explained in "
                    "RUN_DIR/scores.jsonl; state is saved atomically after every window.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = add_node_arguments(p, "validator")
    g = groups["running"]
    g.add_argument("--behaviour", default="honest", metavar="SPEC",
                   help="run another validator behaviour instead of the honest one: weight-copier, colluder, lazy, "
                        "crash, or module:Class (a peers.validator_behaviours.ValidatorBehaviour subclass; "
                        "simulations and research)")
    g.add_argument("--collude-with", metavar="HOTKEY",
                   help="with --behaviour colluder: the peer it gives half of its weight to")
    p.set_defaults(func=run_validator)


def run_validator(args: argparse.Namespace) -> int:
    from peers.node.base import NodeOptions  # deferred: loads torch (`gauntlet --help` stays instant)
    from peers.validator import Validator
    from peers.validator_behaviours import Colluder, load_validator_behaviour

    try:
        behaviour = load_validator_behaviour(args.behaviour)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.collude_with:
        if not isinstance(behaviour, Colluder):
            raise ConfigError("--collude-with needs --behaviour colluder")
        behaviour.target = args.collude_with

    def start(cfg, identity, chain, store, card, world) -> int:
        opts = node_options(NodeOptions, args, "validator", cfg, card, world)
        describe_start("validator", identity, chain, store, world)
        with stop_on_signals(Validator(cfg, identity, chain, store, opts, behaviour=behaviour)) as validator:
            validator.run_forever()
        return 0

    return run_node(args, "validator", start)
