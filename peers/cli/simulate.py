"""``gauntlet simulate``: flags, progress display and the final table."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from gauntlet.errors import ConfigError
from peers.cli.flags import setup_logging
from peers.sim.scenario import DEFAULT_ADVERSARIES, Scenario
from peers.sim.summary import flagged_reasons, summarise

log = logging.getLogger("gauntlet.simulate")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "simulate", help="run a whole network on this machine and report who got paid",
        description="Run a whole Gauntlet network on this machine: honest peers, adversaries and one or more "
                    "validators on an embedded chain (which pays by Yuma Consensus) and store. Writes "
                    "OUT/summary.json, OUT/metrics.jsonl, OUT/report.md and PNG plots. Defaults need nothing but "
                    "this package and finish in a few minutes on 2 CPU cores.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=("lockstep", "live"), default="lockstep",
                   help="lockstep: one process, virtual clock, deterministic for a seed; live: one OS process per "
                        "node on wall-clock windows, talking only through the store and the chain")
    p.add_argument("--honest", type=int, default=5, metavar="N", help="number of honest peers")
    p.add_argument("--adversary", action="append", metavar="SPEC",
                   help="add an adversary: a built-in name or module:Class (a peers.behaviours.Behaviour "
                        f"subclass); repeatable. Default: one of each of {', '.join(DEFAULT_ADVERSARIES)}")
    p.add_argument("--no-adversaries", action="store_true", help="honest peers only")
    p.add_argument("--validators", type=int, metavar="N",
                   help="N honest validators of equal stake (default: one; see --validator for others)")
    p.add_argument("--validator", action="append", metavar="SPEC[@STAKE]",
                   help="add a validator: honest, weight-copier, colluder (pays the free-rider), lazy, crash (stops "
                        "mid-run) or module:Class (a peers.validator_behaviours.ValidatorBehaviour subclass), with "
                        "an optional relative stake, e.g. honest@40; repeatable, added to --validators")
    p.add_argument("--commit-reveal", action="store_true",
                   help="the embedded chain hides each weight row until the epoch after the next (as Bittensor's "
                        "commit-reveal does): a weight copier can only copy old weights")
    p.add_argument("--windows", type=int, default=20, metavar="W", help="windows to run")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="run seed (identities, data, model, choices)")
    p.add_argument("--model", default="tiny", metavar="PRESET", help="model preset or local/hub model")
    p.add_argument("--out", type=Path, default=Path("runs/simulate"), metavar="DIR", help="run directory")
    p.add_argument("--storage", metavar="URL",
                   help="where nodes store: default file:// stores under OUT; 'embedded-s3' starts a loopback S3 "
                        "server for the run (live mode); or any s3:// URL prefix (live mode)")
    p.add_argument("--chain", metavar="URL", help="default: an embedded local:// chain under OUT (live mode may "
                   "name another local:// file)")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML or JSON settings (applied over the "
                   "simulation defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one setting (repeatable)")
    p.add_argument("--data-dir", type=Path, help="prepared datasets cache (default ~/.cache/gauntlet/data)")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the final table")
    p.set_defaults(func=run_simulate)


class Progress:
    """A live panel on a TTY (window, phase, loss, top peers), plain log lines otherwise."""

    def __init__(self, quiet: bool, windows: int) -> None:
        self.quiet, self.windows = quiet, windows
        self.tty = sys.stderr.isatty() and not quiet
        self.state = {"window": "-", "phase": "starting", "loss": "-", "top": "-"}
        self.started = time.time()
        self._live = None
        if self.tty:
            from rich.console import Console  # deferred: rich comes with the [node] extra
            from rich.live import Live

            self._live = Live(self._render(), console=Console(stderr=True), refresh_per_second=4)
            self._live.start()

    def _render(self):
        from rich.table import Table  # deferred: rich comes with the [node] extra

        table = Table(title="gauntlet simulate", show_header=False, min_width=60)
        table.add_row("window", f"{self.state['window']} / {self.windows}")
        table.add_row("phase", self.state["phase"])
        table.add_row("validation loss", self.state["loss"])
        table.add_row("top peers", self.state["top"])
        table.add_row("elapsed", f"{time.time() - self.started:.0f} s")
        return table

    def phase(self, text: str, window: int | None = None) -> None:
        changed = text != self.state["phase"] or (window is not None and str(window) != self.state["window"])
        self.state["phase"] = text
        if window is not None:
            self.state["window"] = str(window)
        if self._live:
            self._live.update(self._render())
        elif not self.quiet and changed:
            log.info("%s%s", f"window {window}: " if window is not None else "", text)

    def window_done(self, view, scenario) -> None:
        top = sorted(view.weights.items(), key=lambda kv: -kv[1])[:3]
        self.state.update(window=str(view.window), loss=f"{view.val_loss:.4f}",
                          top=", ".join(f"{n} {w:.2f}" for n, w in top if w > 0) or "(no weights yet)")
        if self._live:
            self._live.update(self._render())
        elif not self.quiet:
            log.info("window %d done: validation loss %.4f, top peers %s", view.window, view.val_loss,
                     self.state["top"])

    def close(self) -> None:
        if self._live:
            self._live.stop()


def print_table(summary: dict, views) -> None:
    from rich.console import Console  # deferred: rich comes with the [node] extra
    from rich.table import Table

    table = Table(title=f"after {summary['windows']} windows: honest share {summary['honest_weight_share']:.1%}, "
                        f"loss {summary['loss'][0]:.3f} → {summary['loss'][-1]:.3f}" if summary["loss"] else "",
                  caption=weights_caption(views))
    for col in ("peer", "behaviour", "weight", "tokens", "rating", "final score", "flagged", "why"):
        table.add_column(col, justify="right" if col in ("weight", "tokens", "rating", "final score") else "left")
    for p in sorted(summary["peers"], key=lambda p: -p["weight"]):
        table.add_row(p["name"], p["behaviour"], f"{p['weight']:.4f}", f"{p['tokens']:.2f}", f"{p['ordinal']:.2f}",
                      f"{p['final_score']:.3f}", "yes" if p["flagged"] else "no",
                      ", ".join(flagged_reasons(views, p["name"])) or "—")
    Console(width=None if sys.stdout.isatty() else 140).print(table)


def weights_caption(views) -> str:
    """Which weights the table shows: the last the validator set on chain, and when."""
    window = views[-1].weights_window if views else None
    if window is None:
        return "weight: the leading validator set no weights on chain in this run"
    return f"weight: the leading validator's last weights on chain, set after window {window}"


def validator_flags(args: argparse.Namespace) -> list[str]:
    """``--validators N`` honest ones, then every ``--validator SPEC[@STAKE]`` (default: one honest)."""
    if args.validators is not None and args.validators < 0:
        raise ConfigError("--validators must be 0 or more")
    specs = ["honest"] * (args.validators or 0) + list(args.validator or [])
    return specs or ["honest"]


def run_simulate(args: argparse.Namespace) -> int:
    # deferred so that `gauntlet --help` stays quick: these load torch, transformers and the nodes
    from peers.behaviours import load_behaviour
    from peers.sim.lockstep import run_lockstep
    from peers.sim.report import entered_line, tokens_line, write_outputs
    from peers.validator_behaviours import load_validator_behaviour

    setup_logging(args.quiet)
    for noisy in ("gauntlet.peer", "gauntlet.validator", "gauntlet.node", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # the progress display summarises each window
    if args.honest < 1 or args.windows < 1:
        raise ConfigError("--honest and --windows must be at least 1")
    adversaries = [] if args.no_adversaries else (args.adversary or list(DEFAULT_ADVERSARIES))
    scenario = Scenario(honest=args.honest, adversaries=adversaries, windows=args.windows, seed=args.seed,
                        model=args.model, mode=args.mode, out=args.out, storage=args.storage, chain=args.chain,
                        config=args.config, overrides=args.overrides, data_dir=args.data_dir,
                        validators=validator_flags(args), commit_reveal=args.commit_reveal)
    try:
        for spec in set(scenario.nodes().values()):
            load_behaviour(spec)
        if not any(load_validator_behaviour(v.behaviour).evaluates for v in scenario.validator_specs()):
            raise ValueError("at least one validator must evaluate: weight copiers and lazy validators publish "
                             "nothing for peers to follow")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cfg = scenario.config_for()
    if (args.out / "network").exists() or (args.out / "nodes").exists():
        raise ConfigError(f"{args.out} already holds a run; choose another --out")
    progress = Progress(args.quiet, args.windows)
    started = time.time()
    try:
        if args.mode == "lockstep":
            try:
                run = run_lockstep(scenario, progress)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        else:
            from peers.sim.live import run_live  # deferred with the others above

            run = run_live(scenario, progress)
    finally:
        progress.close()
    summary = summarise(scenario, run, time.time() - started)
    write_outputs(scenario, run, summary, cfg)
    print_table(summary, run.views)
    print("\n" + entered_line(summary).replace("**", ""))
    print(tokens_line(summary).replace("**", ""))
    for slow in summary["cannot_keep_up"]:
        print(f"warning: {slow['node']} cannot keep up with the windows: {slow['what']}")
    print(f"\nrun directory: {args.out}  (summary.json, metrics.jsonl, report.md, *.png)")
    return 0
