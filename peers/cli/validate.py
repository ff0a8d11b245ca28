"""``gauntlet validate``: flags, wiring and start-up of a validator node."""

from __future__ import annotations

import argparse
import logging

from peers.cli.flags import add_node_arguments
from peers.cli.launch import run_node, stop_on_signals
from peers.ops.retention import check_retain


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="run a validator: score peers with Gauntlet, set weights, publish aggregates",
        description="Run a validator. After each window's upload slot it checks every peer (presence, validity, "
                    "signature, sync), detects copies, loss-tests a sample of updates, updates OpenSkill ratings, "
                    "sets weights on chain every K windows, and publishes the aggregate, the next peer list, "
                    "checkpoints and a signed, hash-chained window record. Every score is explained in "
                    "RUN_DIR/scores.jsonl; state is saved atomically after every window.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_node_arguments(p, "validator")
    p.set_defaults(func=run_validator)


def run_validator(args: argparse.Namespace) -> int:
    from peers.node.base import NodeOptions  # deferred: loads torch (`gauntlet --help` stays instant)
    from peers.node.data import default_data_dir
    from peers.validator import Validator

    def start(cfg, identity, chain, store, card, world) -> int:
        opts = NodeOptions(run_dir=args.run_dir, data_dir=args.data_dir or default_data_dir(), card=card,
                           allow_local_cards=args.allow_local_cards, stop_after_window=args.until_window, world=world,
                           metrics_port=args.metrics_port, metrics_addr=args.metrics_addr,
                           wandb_project=args.wandb_project,
                           retain=check_retain(args.retain, "validator", cfg.validator.checkpoint_every))
        ranks = (f" on {world.size} rank{'s' if world.size > 1 else ''} ({world.backend}, {world.device.type})"
                 if world else "")
        logging.getLogger("gauntlet.validator").info("validator %s on %s, publishing to %s%s", identity.hotkey,
                                                     chain.url, store.url, ranks)
        with stop_on_signals(Validator(cfg, identity, chain, store, opts)) as validator:
            validator.run_forever()
        return 0

    return run_node(args, "validator", start)
