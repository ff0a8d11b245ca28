"""Flags and wiring shared by ``gauntlet peer`` and ``gauntlet validate``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from gauntlet.errors import ConfigError


def add_node_arguments(p: argparse.ArgumentParser, role: str) -> dict[str, argparse._ArgumentGroup]:
    """Configuration, identity, chain, storage and running flags; returns the groups by name so the
    caller can add its own flags to them."""
    groups = {}
    g = groups["configuration"] = p.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE", help="TOML or JSON file with run and protocol settings")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting, e.g. --set inner.steps=10 (repeatable)")
    g = groups["identity"] = p.add_argument_group(
        "identity (a bittensor wallet's hotkey, or a throwaway key for local networks)")
    g.add_argument("--wallet.name", dest="wallet_name", help="bittensor wallet (coldkey) name")
    g.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default", help="hotkey name in the wallet")
    g.add_argument("--wallet.path", dest="wallet_path", help="wallets directory (default ~/.bittensor/wallets)")
    g.add_argument("--identity-seed", help="derive a throwaway hotkey from this text (local networks only)")
    g = groups["chain"] = p.add_argument_group("chain")
    g.add_argument("--chain", help="chain URL: local:///path/chain.db[?block_time=S] or bittensor://NETWORK/NETUID; "
                   "default: built from --subtensor.network and --netuid")
    g.add_argument("--subtensor.network", dest="network", default="finney", help="bittensor network or ws:// URL")
    g.add_argument("--netuid", type=int, help="subnet id (with --subtensor.network)")
    g.add_argument("--register", action="store_true",
                   help="register the hotkey (local:// chains only)" if role == "peer" else
                   "register the hotkey with a validator permit and stake 1000 (local:// chains only)")
    g = groups["storage"] = p.add_argument_group("storage")
    g.add_argument("--storage", required=True, help=f"where this {role} writes: file:///dir or "
                   "s3://bucket?endpoint_url=...&region=... (write credentials from the AWS environment or below)")
    g.add_argument("--storage.access-key", dest="access_key", help="write access key id (default: $AWS_ACCESS_KEY_ID)")
    g.add_argument("--storage.secret-key", dest="secret_key", help="write secret key (default: $AWS_SECRET_ACCESS_KEY)")
    g.add_argument("--storage.read-access-key", dest="read_key",
                   help="READ-ONLY key id published on chain for others (default: $GAUNTLET_READ_ACCESS_KEY)")
    g.add_argument("--storage.read-secret-key", dest="read_secret",
                   help="READ-ONLY secret published on chain (default: $GAUNTLET_READ_SECRET_KEY)")
    g.add_argument("--allow-local-cards", action="store_true",
                   help="accept other nodes' file:// and loopback buckets (local networks only)")
    g = groups["running"] = p.add_argument_group("running")
    g.add_argument("--run-dir", type=Path, default=Path(f"runs/{role}"), help="local state and logs")
    g.add_argument("--data-dir", type=Path, help="prepared datasets cache (default ~/.cache/gauntlet/data)")
    g.add_argument("--until-window", type=int, help="stop after this window (default: run forever)")
    g.add_argument("--quiet", action="store_true", help="only warnings and errors")
    g.add_argument("--retain", type=int, default=0, metavar="K",
                   help="keep the last K windows of what this node publishes in its bucket (messages, fingerprints, "
                        "aggregates, peer lists) and its last K checkpoints, deleting older ones; 0 keeps everything. "
                        "A peer keeps at least 3, a validator at least validator.checkpoint_every + 3")
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


def identity_from_args(args):
    from gauntlet.identity import Identity

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
    from gauntlet.storage import BucketCard, FileStore

    if isinstance(store, FileStore):
        return BucketCard("file", str(store.root))
    read_key = args.read_key or os.environ.get("GAUNTLET_READ_ACCESS_KEY")
    read_secret = args.read_secret or os.environ.get("GAUNTLET_READ_SECRET_KEY")
    if not read_key or not read_secret:
        raise ConfigError("an s3:// store needs a read-only key to publish: --storage.read-access-key and "
                          "--storage.read-secret-key (or $GAUNTLET_READ_ACCESS_KEY / $GAUNTLET_READ_SECRET_KEY)")
    return BucketCard("s3", store.endpoint_url or "", store.bucket, store.region or "", read_key, read_secret)


def setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False)])
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def open_node(args, role: str):
    """Config, identity, chain (registered when asked), store and its card, from the common flags."""
    from gauntlet.chain import open_chain
    from gauntlet.config import load_config
    from gauntlet.storage import open_store

    setup_logging(args.quiet)
    cfg = load_config(args.config, args.overrides)
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
    return cfg, identity, chain, store, card_for(store, args)


@contextmanager
def stop_on_signals(node):
    """While the node runs, SIGTERM (a service manager stopping it) and SIGINT (Ctrl-C) ask it to stop
    at its next wait, which it does within a fraction of a second when idle; its state is saved after
    every window. A second signal stops it at once."""
    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if node.stop_requested:
            raise KeyboardInterrupt
        logging.getLogger("gauntlet.node").info("%s received: stopping at the next safe point "
                                                "(send it again to stop at once)", name)
        node.request_stop(f"{name} received")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield node
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


EXIT_FILE_ENV = "GAUNTLET_EXIT_FILE"  # where rank 0 says it stopped cleanly (for the --nproc supervisor)


def spawn_torchrun(nproc: int) -> int:
    """``torchrun --standalone --nproc_per_node N -m peers.cli <same args>`` as a child, supervised:
    SIGTERM / Ctrl-C are passed on (rank 0 then stops at its next wait and releases the others), and
    the exit status is 0 when rank 0 stopped cleanly — torchrun itself reports any signal as a failure."""
    import subprocess
    import tempfile

    if nproc < 1:
        raise ConfigError("--nproc must be at least 1")
    rest, skip = [], False
    for arg in sys.argv[1:]:  # torchrun's own parser would take --nproc for its --nproc-per-node
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "peers.cli", *rest]
    with tempfile.TemporaryDirectory(prefix="gauntlet-") as tmp:
        exit_file = Path(tmp) / "exit"
        from gauntlet.parallel.world import die_with_parent

        proc = subprocess.Popen(argv, env={**os.environ, EXIT_FILE_ENV: str(exit_file)}, preexec_fn=die_with_parent)
        stopping: list[int] = []

        def forward(signum, _frame):
            stopping.append(signum)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = proc.wait()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
        clean = exit_file.exists() and exit_file.read_text().strip() == "0"
    if code == 0 or (stopping and clean):
        return 0
    return code if code > 0 else 1


def run_node(args, role: str, start) -> int:
    """Run a node on this process, or on the ranks of a torchrun job: rank 0 opens the chain and the
    store and runs ``start(cfg, identity, chain, store, card, world)``; every other rank builds the
    same model, shards it, and serves rank 0's engine operations until rank 0 stops."""
    from gauntlet.config import load_config
    from gauntlet.parallel.world import (
        exit_now,
        init_world,
        launched_by_torchrun,
        shutdown,
    )

    if not launched_by_torchrun():
        if args.nproc:
            return spawn_torchrun(args.nproc)
        return start(*open_node(args, role), None)
    cfg = load_config(args.config, args.overrides)
    world = init_world(cfg.model.device, args.dist_timeout)
    try:
        if args.nproc and args.nproc != world.size:
            raise ConfigError(f"--nproc {args.nproc} but torchrun started {world.size} processes")
        if cfg.train.batch_size % world.size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} must be a multiple of the {world.size} ranks "
                              f"(each rank trains an equal share of every batch)")
        if world.main:
            opened = open_node(args, role)
            _prepare_data(cfg, args)
            _barrier(world)
            code = start(*opened, world)
            if os.environ.get(EXIT_FILE_ENV):
                Path(os.environ[EXIT_FILE_ENV]).write_text(str(code))
        else:
            _serve(cfg, args, world, train=role == "peer")
            code = 0
    finally:
        shutdown(world)
    exit_now(code)
    return code


def _prepare_data(cfg, args):
    """The (train, validation) datasets; text sources are tokenised into the cache once."""
    from gauntlet.data import open_dataset
    from peers.node import default_data_dir

    return open_dataset(cfg.data, args.data_dir or default_data_dir())


def _barrier(world) -> None:
    import torch.distributed as dist

    dist.barrier(group=world.control)


def _serve(cfg, args, world, train: bool) -> None:
    """A rank other than 0: no chain, no storage, no wallet; the model's shards and rank 0's commands."""
    from gauntlet.models import build_model
    from peers.engine import ModelEngine

    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s rank {world.rank} %(levelname)s %(name)s: "
                        "%(message)s")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # rank 0 decides when to stop, and tells the others
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _barrier(world)  # rank 0 has prepared the data
    vocab = _prepare_data(cfg, args)[0].vocab_size
    model = build_model(cfg.model, vocab, cfg.data.seq_len, seed=cfg.seed)
    ModelEngine(cfg, model, world, train=train).serve()
