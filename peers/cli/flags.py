"""The flags ``gauntlet peer``, ``gauntlet validate`` and ``gauntlet doctor`` share, and what they open: config,
identity, chain, store and the bucket card to publish."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gauntlet.chain import open_chain
from gauntlet.config import config_from_manifest, read_settings, validate_config
from gauntlet.errors import ConfigError
from gauntlet.identity import Identity
from gauntlet.storage import BucketCard, FileStore, open_store


def add_node_arguments(p: argparse.ArgumentParser, role: str) -> dict[str, argparse._ArgumentGroup]:
    """Configuration, identity, chain, storage and running flags; returns the groups by name so the
    caller can add its own flags to them."""
    groups = {}
    g = groups["configuration"] = p.add_argument_group("configuration")
    add_config_arguments(g)
    groups["identity"] = p.add_argument_group(
        "identity (a bittensor wallet's hotkey, or a throwaway key for local networks)")
    add_identity_arguments(groups["identity"])
    add_chain_arguments(groups.setdefault("chain", p.add_argument_group("chain")), role)
    g = groups["storage"] = p.add_argument_group("storage")
    add_storage_arguments(g, role)
    g.add_argument("--allow-local-cards", action="store_true",
                   help="accept other nodes' file:// and loopback buckets (local networks only)")
    g = groups["running"] = p.add_argument_group("running")
    g.add_argument("--run-dir", type=Path, default=Path(f"runs/{role}"), help="local state and logs")
    g.add_argument("--data-dir", type=Path, help="prepared datasets cache (default ~/.cache/gauntlet/data)")
    g.add_argument("--until-window", type=int, help="stop after this window (default: run forever)")
    add_logging_arguments(g)
    g.add_argument("--retain", type=int, default=0, metavar="K",
                   help="keep the last K windows of what this node publishes in its bucket (messages, fingerprints, "
                        "aggregates, peer lists) and its last K checkpoints, deleting older ones; 0 keeps everything. "
                        "Peers and validators keep at least validator.checkpoint_every + 3 (28 by default)")
    g = groups["monitoring"] = p.add_argument_group("monitoring")
    g.add_argument("--metrics.port", dest="metrics_port", type=int, metavar="PORT",
                   help="serve Prometheus metrics on /metrics and a health check on /healthz (200 while the node "
                        "keeps up with the chain, 503 with the reason when it is a window or more behind)")
    g.add_argument("--metrics.addr", dest="metrics_addr", default="127.0.0.1",
                   help="address to serve metrics on (loopback by default; 0.0.0.0 exposes them)")
    g.add_argument("--wandb.project", dest="wandb_project", metavar="NAME",
                   help="also log each window's metrics to Weights & Biases (offline when WANDB_MODE=offline)")
    g = groups["devices"] = p.add_argument_group(
        "devices (one process, or N processes with the model sharded over them by FSDP2)")
    g.add_argument("--nproc", type=int, metavar="N",
                   help="run on N processes: starts `torchrun --standalone --nproc_per_node N` with these same "
                        "arguments (one process per GPU; gloo on CPU). Equivalent to launching with torchrun yourself")
    g.add_argument("--dist-timeout", type=float, default=300.0, metavar="S",
                   help="seconds a collective may wait for the other ranks before this node stops with an error")
    return groups


def add_identity_arguments(g) -> None:
    """``--wallet.*`` and ``--identity-seed``."""
    g.add_argument("--wallet.name", dest="wallet_name", help="bittensor wallet (coldkey) name")
    g.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default", help="hotkey name in the wallet")
    g.add_argument("--wallet.path", dest="wallet_path", help="wallets directory (default ~/.bittensor/wallets)")
    g.add_argument("--identity-seed", help="derive a throwaway hotkey from this text (local networks only)")


REGISTER_HELP = {
    "peer": "register the hotkey (local:// chains only)",
    "validator": "register the hotkey with a validator permit and stake 1000 (local:// chains only)",
    "owner": "register the hotkey and make it the subnet's owner (local:// chains only)",
}


def add_chain_arguments(g, role: str) -> None:
    """``--chain``, ``--subtensor.network``, ``--netuid``, and ``--register`` for the roles that can."""
    g.add_argument("--chain", help="chain URL: local:///path/chain.db[?block_time=S] or bittensor://NETWORK/NETUID; "
                   "default: built from --subtensor.network and --netuid")
    g.add_argument("--subtensor.network", dest="network", default="finney", help="bittensor network or ws:// URL")
    g.add_argument("--netuid", type=int, help="subnet id (with --subtensor.network)")
    if role in REGISTER_HELP or role == "node":
        g.add_argument("--register", action="store_true", help=REGISTER_HELP.get(role, REGISTER_HELP["validator"]))


def add_storage_arguments(g, role: str, required: bool = True) -> None:
    """``--storage`` and its write and read-only keys."""
    g.add_argument("--storage", required=required, help=f"where this {role} writes: file:///dir or "
                   "s3://bucket?endpoint_url=...&region=... (write credentials from the AWS environment or below)")
    g.add_argument("--storage.access-key", dest="access_key", help="write access key id (default: $AWS_ACCESS_KEY_ID)")
    g.add_argument("--storage.secret-key", dest="secret_key", help="write secret key (default: $AWS_SECRET_ACCESS_KEY)")
    g.add_argument("--storage.read-access-key", dest="read_key",
                   help="READ-ONLY key id published on chain for others (default: $GAUNTLET_READ_ACCESS_KEY)")
    g.add_argument("--storage.read-secret-key", dest="read_secret",
                   help="READ-ONLY secret published on chain (default: $GAUNTLET_READ_SECRET_KEY)")


def add_config_arguments(g) -> None:
    """``--manifest``, ``--config`` and ``--set``: where a node's run settings and local settings come from."""
    g.add_argument("--manifest", choices=["chain", "none"],
                   help="where the run's settings come from. chain: the manifest the subnet owner published (its hash "
                        "committed on chain), fetched, verified and cached in --run-dir; none: this node's "
                        "--config/--set define the run (a network of your own). Default: chain on bittensor:// "
                        "chains, none on local:// ones")
    g.add_argument("--config", metavar="FILE", help="TOML or JSON file of settings: local ones (model.device, "
                   "data.path, ...) when the run comes from a manifest, every setting with --manifest none")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting, e.g. --set model.device=cuda:1 (repeatable)")


def manifest_mode(args, chain=None) -> str:
    """``--manifest``, or its default for the chain: ``none`` on local:// chains, else ``chain``."""
    url = chain.url if chain is not None else (args.chain or "bittensor://")
    return args.manifest or ("none" if url.startswith("local://") else "chain")


def node_config(args, chain=None):
    """The node's config: the run settings of the manifest the subnet owner committed (``--manifest
    chain``; without ``chain`` — a rank other than 0 — the copy rank 0 joined in ``--run-dir``) with
    this node's local settings, or the run its own settings define (``--manifest none``)."""
    from peers.network.manifest import fetch_manifest, read_saved_manifest  # deferred: the node stack

    local = read_settings(args.config, args.overrides)
    if manifest_mode(args, chain) == "none":
        return validate_config(local)
    saved = args.run_dir / "manifest.json"
    signed = (fetch_manifest(chain, saved, allow_local_cards=args.allow_local_cards) if chain is not None
              else read_saved_manifest(saved))
    return config_from_manifest(signed.document, local, signed.written_by)


def identity_from_args(args):
    if args.identity_seed and args.wallet_name:
        raise ConfigError("give either --wallet.name or --identity-seed, not both")
    if args.identity_seed:
        return Identity.from_seed(args.identity_seed)
    if args.wallet_name:
        try:
            return Identity.from_wallet(args.wallet_name, args.wallet_hotkey, args.wallet_path)
        except Exception as exc:  # the SDK raises several error types for missing or locked keys
            raise ConfigError(
                f"cannot load hotkey {args.wallet_hotkey!r} of wallet {args.wallet_name!r}: {exc}") from exc
    raise ConfigError("no identity: pass --wallet.name/--wallet.hotkey (or --identity-seed on a local network)")


def card_for(store, args):
    if isinstance(store, FileStore):
        return BucketCard("file", str(store.root))
    read_key = args.read_key or os.environ.get("GAUNTLET_READ_ACCESS_KEY")
    read_secret = args.read_secret or os.environ.get("GAUNTLET_READ_SECRET_KEY")
    if not read_key or not read_secret:
        raise ConfigError("an s3:// store needs a read-only key to publish: --storage.read-access-key and "
                          "--storage.read-secret-key (or $GAUNTLET_READ_ACCESS_KEY / $GAUNTLET_READ_SECRET_KEY)")
    return BucketCard("s3", store.endpoint_url or "", store.bucket, store.region or "", read_key, read_secret)


def node_options(options_class, args, role: str, cfg, card, world, **extra):
    """The node's options from the flags every node shares (``extra``: the role's own)."""
    from peers.node.data import default_data_dir  # deferred: loads torch (`gauntlet --help` stays instant)
    from peers.ops.retention import check_retain

    return options_class(run_dir=args.run_dir, data_dir=args.data_dir or default_data_dir(), card=card,
                         allow_local_cards=args.allow_local_cards, stop_after_window=args.until_window, world=world,
                         metrics_port=args.metrics_port, metrics_addr=args.metrics_addr,
                         wandb_project=args.wandb_project,
                         retain=check_retain(args.retain, role, cfg.validator.checkpoint_every), **extra)


def describe_start(role: str, identity, chain, store, world) -> None:
    """One log line: who starts where, on how many ranks."""
    ranks = (f" on {world.size} rank{'s' if world.size > 1 else ''} ({world.backend}, {world.device.type})"
             if world else "")
    verb = "publishing to" if role == "validator" else "storing in"
    logging.getLogger(f"gauntlet.{role}").info("%s %s on %s, %s %s%s", role, identity.hotkey, chain.url, verb,
                                               store.url, ranks)


def add_logging_arguments(g) -> None:
    """``--quiet``, ``--logging.debug`` and ``--logging.trace`` (see :func:`log_levels`)."""
    g.add_argument("--quiet", action="store_true", help="only warnings and errors")
    g.add_argument("--logging.debug", dest="log_debug", action="store_true",
                   help="debug lines from gauntlet's own loggers (every rank, under torchrun)")
    g.add_argument("--logging.trace", dest="log_trace", action="store_true",
                   help="debug lines from every library too (boto3, urllib3, torch.distributed, the bittensor SDK)")


def log_levels(quiet: bool = False, debug: bool = False, trace: bool = False) -> tuple[int, int]:
    """(the root logger's level, gauntlet's loggers' level): ``trace`` debug everywhere, ``debug``
    debug for gauntlet only, ``quiet`` warnings and errors, else info."""
    if trace:
        return logging.DEBUG, logging.DEBUG
    base = logging.WARNING if quiet else logging.INFO
    return base, logging.DEBUG if debug else base


def setup_logging(quiet: bool, debug: bool = False, trace: bool = False, prefix: str = "") -> None:
    """The process's log lines: rich on a terminal, else timestamped lines (``prefix`` before the level,
    e.g. a rank); levels from :func:`log_levels`."""
    root, own = log_levels(quiet, debug, trace)
    if sys.stderr.isatty() and not prefix:
        from rich.logging import RichHandler  # deferred: rich comes with the [node] extra

        logging.basicConfig(level=root, format="%(message)s", handlers=[RichHandler(show_path=False)])
    else:
        logging.basicConfig(level=root, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gauntlet").setLevel(own)


def open_node(args, role: str):
    """Config (:func:`node_config`), identity, chain (registered when asked), store and its card, from the
    common flags."""
    setup_logging(args.quiet, args.log_debug, args.log_trace)
    identity = identity_from_args(args)
    if args.chain is None and args.netuid is None:
        raise ConfigError("no chain: pass --chain URL, or --netuid (with --subtensor.network)")
    chain = open_chain(args.chain or f"bittensor://{args.network}/{args.netuid}")
    if args.register:
        if not hasattr(chain, "register"):
            raise ConfigError("--register works on local:// chains only; register on Bittensor with btcli")
        if role == "validator":
            chain.register(identity.hotkey, stake=1000.0, validator_permit=True)
        else:
            chain.register(identity.hotkey)
    store = open_store(args.storage, access_key=args.access_key or os.environ.get("AWS_ACCESS_KEY_ID"),
                       secret_key=args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY"))
    return node_config(args, chain), identity, chain, store, card_for(store, args)
