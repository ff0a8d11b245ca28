"""Launching a node: on this process, or supervising a ``torchrun`` job (``--nproc N``) whose rank 0
runs the node while the other ranks serve its model operations; signals turn into a clean stop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from gauntlet.config import load_config
from gauntlet.errors import ConfigError
from peers.cli.flags import node_config, open_node, setup_logging

# Imports of torch and the node code (gauntlet.parallel, gauntlet.data, gauntlet.models, peers.node) are
# deferred into the functions that start a node: `gauntlet --help` and flag errors stay instant.


@contextmanager
def stop_on_signals(node):
    """While the node runs, SIGTERM (a service manager stopping it) and SIGINT (Ctrl-C) ask it to stop
    at its next wait, which it does within a fraction of a second when idle; its state is saved after
    every window. A second signal stops it at once."""
    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if node.clock.stop_requested:
            raise KeyboardInterrupt
        logging.getLogger("gauntlet.node").info("%s received: stopping at the next safe point "
                                                "(send it again to stop at once)", name)
        node.clock.request_stop(f"{name} received")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    done = threading.Event()
    if os.environ.get(STOP_FILE_ENV):  # rank 0 under the --nproc supervisor: it asks by creating a file
        threading.Thread(target=_watch_stop_file, args=(node, Path(os.environ[STOP_FILE_ENV]), done),
                         name="stop-file", daemon=True).start()
    try:
        yield node
    finally:
        done.set()
        for sig, old in previous.items():
            signal.signal(sig, old)


EXIT_FILE_ENV = "GAUNTLET_EXIT_FILE"  # where rank 0 says it stopped cleanly (for the --nproc supervisor)
STOP_FILE_ENV = "GAUNTLET_STOP_FILE"  # created by the --nproc supervisor: rank 0 stops as on SIGTERM


def _watch_stop_file(node, path: Path, done: threading.Event, every_s: float = 0.2) -> None:
    """Until the node has stopped: when ``path`` appears, ask it to stop at its next safe point."""
    while not done.wait(every_s):
        if path.exists():
            logging.getLogger("gauntlet.node").info("stop requested by the supervisor: stopping at the next safe point")
            node.clock.request_stop("SIGTERM received by the supervisor")
            return


def spawn_torchrun(nproc: int) -> int:
    """``torchrun --standalone --nproc_per_node N -m peers.cli <same args>`` as a child, supervised:
    the first SIGTERM / Ctrl-C asks rank 0 to stop through a file (it stops at its next wait and
    releases the others, and torchrun's agent ends normally, without the traceback a signal gives it);
    a second one is passed on to torchrun (stop now). The exit status is 0 when rank 0 stopped cleanly."""
    from gauntlet.parallel.world import die_with_parent  # deferred: torch (see the top of this module)

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
        exit_file, stop_file = Path(tmp) / "exit", Path(tmp) / "stop"
        proc = subprocess.Popen(argv, env={**os.environ, EXIT_FILE_ENV: str(exit_file), STOP_FILE_ENV: str(stop_file)},
                                preexec_fn=die_with_parent)
        stopping: list[int] = []

        def forward(signum, _frame):
            stopping.append(signum)
            if len(stopping) == 1:
                stop_file.touch()  # rank 0 stops at its next safe point; the others follow it
            elif proc.poll() is None:
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
    from gauntlet.parallel.world import exit_now, init_world, launched_by_torchrun, shutdown  # deferred: torch

    if not launched_by_torchrun():
        if args.nproc:
            return spawn_torchrun(args.nproc)
        return start(*open_node(args, role), None)
    world = init_world(load_config(args.config, args.overrides).model.device, args.dist_timeout)  # local setting
    try:
        if args.nproc and args.nproc != world.size:
            raise ConfigError(f"--nproc {args.nproc} but torchrun started {world.size} processes")
        if world.main:
            opened = open_node(args, role)
            cfg = _check_ranks(opened[0], world)
            _prepare_data(cfg, args)
            _barrier(world)
            code = start(*opened, world)
            if os.environ.get(EXIT_FILE_ENV):
                Path(os.environ[EXIT_FILE_ENV]).write_text(str(code))
        else:
            _serve(args, world, train=role == "peer")
            code = 0
    finally:
        shutdown(world)
    exit_now(code)
    return code


def _check_ranks(cfg, world):
    if cfg.train.batch_size % world.size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} must be a multiple of the {world.size} ranks "
                          f"(each rank trains an equal share of every batch)")
    return cfg


def _prepare_data(cfg, args):
    """The (train, validation) datasets; text sources are tokenised into the cache once."""
    from gauntlet.data import open_dataset  # deferred: torch (see the top of this module)
    from peers.node.data import default_data_dir

    return open_dataset(cfg.data, args.data_dir or default_data_dir())


def _barrier(world) -> None:
    import torch.distributed as dist  # deferred: torch (see the top of this module)

    dist.barrier(group=world.control)


def _serve(args, world, train: bool) -> None:
    """A rank other than 0: no chain, no storage, no wallet; the model's shards and rank 0's commands."""
    from gauntlet.models import build_model  # deferred: torch (see the top of this module)
    from peers.node.engine import ModelEngine

    # warnings and errors only, unless --logging.debug / --logging.trace ask for more
    setup_logging(True, args.log_debug, args.log_trace, prefix=f"rank {world.rank} ")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # rank 0 decides when to stop, and tells the others
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _barrier(world)  # rank 0 has joined the run (its manifest is in --run-dir) and prepared the data
    cfg = _check_ranks(node_config(args), world)
    vocab = _prepare_data(cfg, args)[0].vocab_size
    model = build_model(cfg.model, vocab, cfg.data.seq_len, seed=cfg.seed)
    ModelEngine(cfg, model, world, train=train).serve()
