"""``gauntlet validate``: flags, wiring and start-up of a validator node."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gauntlet.errors import ConfigError
from peers.peer_cli import identity_from_args, setup_logging


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="run a validator: score peers with Gauntlet, set weights, publish aggregates",
        description="Run a validator. After each window's upload slot it checks every peer (presence, validity, "
                    "signature, sync), detects copies, loss-tests a sample of updates, updates OpenSkill ratings, "
                    "sets weights on chain every K windows, and publishes the aggregate, the next peer list, "
                    "checkpoints and a signed, hash-chained window record. Every score is explained in "
                    "RUN_DIR/scores.jsonl; state is saved atomically after every window.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE", help="TOML or JSON file with run and protocol settings")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting, e.g. --set validator.policy=tiered (repeatable)")
    g = p.add_argument_group("identity (the validator's hotkey)")
    g.add_argument("--wallet.name", dest="wallet_name", help="bittensor wallet (coldkey) name")
    g.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default", help="hotkey name in the wallet")
    g.add_argument("--wallet.path", dest="wallet_path", help="wallets directory (default ~/.bittensor/wallets)")
    g.add_argument("--identity-seed", help="derive a throwaway hotkey from this text (local networks only)")
    g = p.add_argument_group("chain")
    g.add_argument("--chain", help="chain URL: local:///path/chain.db or bittensor://NETWORK/NETUID; default: "
                   "built from --subtensor.network and --netuid")
    g.add_argument("--subtensor.network", dest="network", default="finney", help="bittensor network or ws:// URL")
    g.add_argument("--netuid", type=int, help="subnet id (with --subtensor.network)")
    g.add_argument("--register", action="store_true",
                   help="register the hotkey with a validator permit and stake 1000 (local:// chains only)")
    g = p.add_argument_group("storage (where the validator publishes aggregates, lists, checkpoints, records)")
    g.add_argument("--storage", required=True, help="file:///dir or s3://bucket?endpoint_url=...&region=...")
    g.add_argument("--storage.access-key", dest="access_key", help="write access key id (default: $AWS_ACCESS_KEY_ID)")
    g.add_argument("--storage.secret-key", dest="secret_key", help="write secret key (default: $AWS_SECRET_ACCESS_KEY)")
    g.add_argument("--storage.read-access-key", dest="read_key",
                   help="READ-ONLY key id published on chain for others (default: $GAUNTLET_READ_ACCESS_KEY)")
    g.add_argument("--storage.read-secret-key", dest="read_secret",
                   help="READ-ONLY secret published on chain (default: $GAUNTLET_READ_SECRET_KEY)")
    g.add_argument("--allow-local-cards", action="store_true",
                   help="accept peers' file:// and loopback buckets (local networks only)")
    g = p.add_argument_group("running")
    g.add_argument("--run-dir", type=Path, default=Path("runs/validator"), help="state, scores.jsonl")
    g.add_argument("--data-dir", type=Path, help="prepared datasets cache (default ~/.cache/gauntlet/data)")
    g.add_argument("--until-window", type=int, help="stop after evaluating this window (default: run forever)")
    g.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.set_defaults(func=run_validator)


def run_validator(args: argparse.Namespace) -> int:
    from gauntlet.chain import open_chain
    from gauntlet.config import load_config
    from gauntlet.storage import open_store
    from peers.node import NodeOptions, default_data_dir
    from peers.peer_cli import card_for
    from peers.validator import Validator

    setup_logging(args.quiet)
    cfg = load_config(args.config, args.overrides)
    identity = identity_from_args(args)
    if args.chain is None and args.netuid is None:
        raise ConfigError("no chain: pass --chain URL, or --netuid (with --subtensor.network)")
    chain = open_chain(args.chain or f"bittensor://{args.network}/{args.netuid}")
    if args.register:
        if not hasattr(chain, "register"):
            raise ConfigError("--register works on local:// chains only; register on Bittensor with btcli")
        chain.register(identity.hotkey, stake=1000.0, validator_permit=True)
    store = open_store(args.storage, access_key=args.access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
                       secret_key=args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"))
    opts = NodeOptions(run_dir=args.run_dir, data_dir=args.data_dir or default_data_dir(),
                       card=card_for(store, args), allow_local_cards=args.allow_local_cards,
                       stop_after_window=args.until_window)
    Validator(cfg, identity, chain, store, opts).run_forever()
    return 0
