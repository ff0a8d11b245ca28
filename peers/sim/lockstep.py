"""The lockstep network: every node in one process on a virtual clock, deterministic for a seed.

The chain runs a manual clock and the file stores stamp objects with the same virtual time, so the
upload slot, "too late" and "who uploaded first" mean exactly what they mean live — the very same
:class:`~peers.peer.Peer` and :class:`~peers.validator.Validator` classes run, only nobody sleeps.
Every node saves its state each window; :func:`build` on an existing directory resumes, and a window
interrupted by a crash is simply run again (the chain is not advanced twice): peers that had already
finished it keep their result, and peers behind the validator first redo the windows they missed
(training included: their message is already out, but the optimiser and error-feedback state that
training left behind died with the process).

One window ``w`` (virtual times relative to the boundary ``b = start(w+1)``):

- peers that do not wait for others compute their message during ``w``;
- the chain advances to ``w+1``; they upload at ``b + 0.01·i`` (a late uploader after the slot);
- peers that wait for others (copiers) compute and upload at ``b + slot/2``;
- after the slot closes the validator evaluates ``w``, then every peer applies ``w``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from gauntlet.chain.local import LocalChain
from gauntlet.config import GauntletConfig
from gauntlet.data import open_dataset
from gauntlet.identity import Identity
from gauntlet.models import mean_loss
from gauntlet.storage import BucketCard, FileStore
from peers.behaviours import Behaviour, load_behaviour
from peers.node.base import NodeOptions
from peers.node.data import default_data_dir
from peers.peer import Peer, PeerOptions
from peers.sim.scenario import Scenario, chain_tempo
from peers.sim.summary import SimRun, WindowView, note_entries, window_lines
from peers.validator import Validator
from peers.validator_behaviours import Colluder, ValidatorBehaviour, load_validator_behaviour

log = logging.getLogger("gauntlet.lockstep")
GENESIS = 1_700_000_000.0  # virtual unix time of block 0


class VirtualClock:
    def __init__(self, start: float = GENESIS) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class LockstepNetwork:
    cfg: GauntletConfig
    out: Path
    clock: VirtualClock
    chain: LocalChain
    validators: dict[str, Validator]  # node name -> validator, highest stake first
    peers: dict[str, Peer] = field(default_factory=dict)
    window: int = 0  # the next window to run

    @property
    def block_time(self) -> float:
        return self.chain.block_time

    @property
    def validator(self) -> Validator:
        """The leader: the highest-stake validator that evaluates and still worked on the last window
        run (the one peers follow first)."""
        evaluating = [v for v in self.validators.values() if v.behaviour.evaluates]
        working = [v for v in evaluating if _stop(v) is None or self.window - 1 <= _stop(v)]
        return (working or evaluating)[0]


def _stop(validator: Validator) -> int | None:
    """The last window a validator works on (its behaviour may stop it before the run's end)."""
    return validator.behaviour.stops_after(validator.opts.stop_after_window)


def node_identity(seed: int, name: str) -> Identity:
    return Identity.from_seed(f"lockstep|{seed}|{name}")


def build(out: str | Path, cfg: GauntletConfig, peers: dict[str, Behaviour], data_dir: Path,
          block_time: float = 12.0, identity=None, stop_after_window: int | None = None,
          tempo: int = 360, validators: list[tuple[str, ValidatorBehaviour, float]] | None = None,
          commit_reveal: bool = False) -> LockstepNetwork:
    """Create (or reopen, after a crash) a lockstep network in ``out``: chain, stores, nodes.
    ``identity(name)`` gives each node's key (default: derived from the seed and the name);
    ``stop_after_window``: the run's last window (the validators set weights there too);
    ``validators``: (node name, behaviour, stake) of each, highest stake first (default: one honest
    validator named ``validator``); at least one must evaluate."""
    out = Path(out)
    clock = VirtualClock()
    chain = LocalChain(out / "chain.db", clock="manual", block_time=block_time, now=clock, tempo=tempo,
                       commit_reveal=commit_reveal)
    if chain.block() > 0:  # reopening: continue the virtual clock where the chain is
        clock.now = chain.timestamp(chain.block())
    cache: dict = {}
    identity = identity or (lambda name: node_identity(cfg.seed, name))
    validators = sorted(validators or [("validator", ValidatorBehaviour(), 1000.0)], key=lambda v: -v[2])
    if not any(behaviour.evaluates for _, behaviour, _ in validators):
        raise ValueError("a network needs at least one validator that evaluates (weight copiers and lazy "
                         "validators publish nothing for peers to follow)")
    built: dict[str, Validator] = {}
    for name, behaviour, stake in validators:
        vid = identity(name)
        chain.register(vid.hotkey, stake=stake, validator_permit=True)
        store = FileStore(out / name / "bucket", clock=clock)
        # each validator draws its samples from its own secret (the lone default one: as it always has)
        secret = hashlib.sha256(f"lockstep-eval|{cfg.seed}{'' if name == 'validator' else '|' + name}".encode()).digest()
        built[name] = Validator(cfg, vid, chain, store, NodeOptions(
            run_dir=out / name / "state", data_dir=data_dir, card=BucketCard("file", str(store.root)),
            allow_local_cards=True, message_cache=cache, stop_after_window=stop_after_window), eval_secret=secret,
            behaviour=behaviour)
    net = LockstepNetwork(cfg, out, clock, chain, built)
    for name, behaviour in peers.items():
        ident = identity(name)
        chain.register(ident.hotkey)
        store = FileStore(out / "peers" / name / "bucket", clock=clock)
        net.peers[name] = Peer(cfg, ident, chain, store, PeerOptions(
            run_dir=out / "peers" / name / "state", data_dir=data_dir, card=BucketCard("file", str(store.root)),
            allow_local_cards=True, durable=False, message_cache=cache), behaviour)
    for validator in built.values():
        validator.start()
    for peer in net.peers.values():
        peer.start()
    # after a crash: the first window some validator still has to evaluate
    pending = [v.book.window + 1 for v in built.values() if _stop(v) is None or v.book.window < _stop(v)]
    net.window = min(pending) if pending else max(v.book.window for v in built.values()) + 1
    return net


def run_window(net: LockstepNetwork) -> dict:
    """Run the next window of the whole network; returns the validator's window record."""
    w, cfg, clock = net.window, net.cfg, net.clock
    bpw, slot = cfg.timing.blocks_per_window, cfg.timing.upload_slot_s
    for _, peer in sorted(net.peers.items()):  # after a crash: windows the validator finished, this peer not
        for missed in range(peer.window_done + 1, w):
            _, facts = peer.make_message(missed)  # rebuilds the optimiser and error-feedback state it lost
            peer.finish(missed, peer.apply(missed), {"trained": True, "replayed": True, **facts})
    todo = {n: p for n, p in net.peers.items() if p.window_done < w}  # the others finished w before a crash
    _advance_to(net, w * bpw)
    early = {n: p for n, p in todo.items() if not p.behaviour.waits_for_others}
    waiting = {n: p for n, p in todo.items() if p.behaviour.waits_for_others}
    clock.now = net.chain.timestamp(w * bpw) + 1.0
    messages = {n: p.make_message(w) for n, p in early.items()}
    boundary = net.chain.timestamp(w * bpw) + bpw * net.block_time
    _advance_to(net, (w + 1) * bpw)  # a window re-run after a crash finds the chain already there
    late_at = boundary + slot + cfg.timing.slot_grace_s + 0.5
    facts = {}
    for i, (name, peer) in enumerate(sorted(early.items())):
        data, fact = messages[name]
        clock.now = late_at if peer.behaviour.upload_delay_s > slot else boundary + 0.01 * (i + 1)
        facts[name] = {**fact, "uploaded": peer.upload(w, data)}
    for name, peer in sorted(waiting.items()):
        clock.now = boundary + slot / 2
        data, fact = peer.make_message(w)
        facts[name] = {**fact, "uploaded": peer.upload(w, data)}
    clock.now = late_at + 0.5
    records = {name: v.evaluate_window(w) for name, v in _working(net, w)}  # stake order; copiers after
    record = next((r for r in records.values() if r.get("fingerprint")), {})  # the leader's
    for name, peer in sorted(todo.items()):
        peer.finish(w, peer.apply(w), {"trained": True, **facts[name]})
    net.window = w + 1
    return record


def _working(net: LockstepNetwork, window: int) -> list[tuple[str, Validator]]:
    """The validators that work on ``window`` (not stopped by their behaviour, nor done with it
    before a crash): those that evaluate first, in stake order, then those that only set weights."""
    active = [(n, v) for n, v in net.validators.items() if v.book.window < window
              and ((stop := _stop(v)) is None or window <= stop)]
    return [nv for nv in active if nv[1].behaviour.evaluates] + [nv for nv in active if not nv[1].behaviour.evaluates]


def _advance_to(net: LockstepNetwork, block: int) -> None:
    current = net.chain.block()
    if current < block:
        net.clock.now = net.chain.timestamp(current) + (block - current) * net.block_time
        net.chain.advance(block - current)


def run(net: LockstepNetwork, windows: int) -> list[dict]:
    """Run ``windows`` more windows."""
    return [run_window(net) for _ in range(windows)]
def run_lockstep(scenario: Scenario, progress) -> SimRun:
    """Run a scenario in lockstep: the per-window views, each peer's hotkey, the honest peers' mean
    message size and the model's parameter count."""
    cfg = scenario.config_for()
    if scenario.storage not in (None, "file") or scenario.chain not in (None, "local"):
        raise ValueError("--mode lockstep runs on a virtual clock that only the embedded chain and file stores can "
                         "follow; use --mode live for other --storage/--chain URLs")
    data_dir = scenario.data_dir or default_data_dir()
    progress.phase("preparing data")
    open_dataset(cfg.data, data_dir)  # tokenised once here (text sources), or shards checked
    behaviours = {name: load_behaviour(spec) for name, spec in scenario.nodes().items()}
    validators = [(v.node, validator_behaviour(scenario, v.behaviour), v.stake) for v in scenario.validator_specs()]
    net = build(scenario.out / "network", cfg, behaviours, data_dir, identity=scenario.identity,
                stop_after_window=scenario.windows - 1,  # the validators also set weights at the last window
                tempo=chain_tempo(cfg), validators=validators, commit_reveal=scenario.commit_reveal)
    hotkeys = {name: peer.identity.hotkey for name, peer in net.peers.items()}
    by_hotkey = {h: n for n, h in hotkeys.items()}
    val = net.validator.data.validation_batches(4)
    uid_of = {n.hotkey: n.uid for n in net.chain.metagraph()}
    views: list[WindowView] = []
    sizes: list[int] = []
    weights_window = None
    while net.window < scenario.windows:
        w = net.window
        progress.phase("training, uploading, validating", window=w)
        t0 = time.time()
        record = run_window(net)
        loss = mean_loss(net.validator.model, val, cfg.model.autocast_bf16)
        row = net.chain.weights().get(uid_of[net.validator.identity.hotkey], {})  # the leader's
        weights = {name: row.get(uid_of[h], 0.0) for name, h in hotkeys.items()}
        peers = {by_hotkey[h]: f for h, f in record["peers"].items() if h in by_hotkey}
        weights_window = w if record.get("weights") else weights_window
        view = WindowView(w, loss, weights, peers, {"window_s": round(time.time() - t0, 2)}, weights_window)
        lines = [window_lines(peer.opts.run_dir / "metrics.jsonl").get(w, {}) for name, peer in net.peers.items()
                 if behaviours[name].name == "honest"]
        note_entries(view, lines, by_hotkey)
        sizes += [line.get("bytes_sent", 0) for line in lines]
        views.append(view)
        progress.window_done(view, scenario)
    mean_bytes = sum(sizes) / len(sizes) if sizes else 0.0
    _advance_to(net, net.chain.block() + chain_tempo(cfg))  # the epoch that pays the last weights
    return SimRun(views, hotkeys, mean_bytes, sum(p.numel() for p in net.validator.model.parameters()),
                  payouts=net.chain.payouts(), epochs=net.chain.epochs(), chain_weights=net.chain.weights(),
                  validators={v.name: scenario.identity(v.node).hotkey for v in scenario.validator_specs()})


def validator_behaviour(scenario: Scenario, spec: str) -> ValidatorBehaviour:
    """A simulation's validator behaviour; a colluder colludes with the first free-rider (else the
    first adversary)."""
    behaviour = load_validator_behaviour(spec)
    if isinstance(behaviour, Colluder) and behaviour.target is None:
        behaviour.target = scenario.colluder_target()
    return behaviour
