"""The validator node (docs/protocol.md §4–6): score every peer, rate, set weights, publish what keeps
the network in sync, and explain every decision.

Each window ``w``, after its upload slot has closed (:meth:`Validator.evaluate_window`, one named
phase per step):

1. gather every committed peer's message (stage 1: presence in the slot, validity, signature, run,
   window) and read each present peer's weight sample to measure how many outer steps behind it is;
2. copy detection over all valid messages (index overlap and value similarity; the later uploader
   is the offender);
3. stage 2, the loss test, for a sample binned by rating (least recently tested first): the peer's
   update alone, scaled, on its own assigned data and on the window's shared random data;
4. the book update: penalties, moving averages, one OpenSkill match, final scores (one JSONL line
   per peer in ``scores.jsonl`` with every factor);
5. the aggregate of the listed peers (the same rule every peer applies) and the outer step;
   publish the replay list (the ids of the messages applied), the peer list for ``w+1``, a checkpoint every N windows and the signed,
   hash-chained window record; set weights on chain every K windows; save the state atomically.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field

import torch

from gauntlet.chain import Chain
from gauntlet.config import GauntletConfig
from gauntlet.errors import ChainError, InvalidMessage, ObjectNotFound, ObjectTooLarge, StorageError
from gauntlet.identity import Identity
from gauntlet.rating import WindowOutcome, policy_weights, update_book
from gauntlet.scoring import LossTest, steps_behind
from gauntlet.scoring.sampling import choose_for_eval
from gauntlet.sparseloco.aggregate import median_norms
from gauntlet.storage import BucketCard, ObjectStore, keys
from gauntlet.uniqueness import CopyFinding, find_copies, own_eval_indices
from gauntlet.uniqueness.copying import pair_stats
from gauntlet.uniqueness.sampled import draw_sample, sample_seed
from peers.network.artefacts import write_artefact
from peers.network.replay import encode_replay, message_id
from peers.network.directory import NetworkView
from peers.network.gather import GatherResult
from peers.network.peer_list import ListChoice, encode_peer_list, select
from peers.network.records import seal
from peers.network.spool import Spool, read_message_sample
from peers.node.base import Node, NodeOptions
from peers.node.book import NAME as STATE_NAME
from peers.node.book import ValidatorBook, book_from_meta, book_meta
from peers.node.clock import StopRequested
from peers.node.state_files import state_size
from peers.validator_behaviours import ValidatorBehaviour, WeightsContext

log = logging.getLogger("gauntlet.validator")


@dataclass
class Evaluation:
    """One window's evaluation as it goes through the phases of :meth:`Validator.evaluate_window`."""

    window: int
    network: NetworkView  # read once per window: on Bittensor each read is a round trip
    started: float = field(default_factory=time.time)
    result: GatherResult | None = None  # stage 1: the valid messages (spooled) and who failed how
    choice: ListChoice | None = None  # the list that governs the window's aggregate (read with the network)
    failed: dict[str, str] = field(default_factory=dict)  # hotkey -> missing | late | invalid: reason
    reference: list[float] = field(default_factory=list)  # our weight sample before the window's step
    behind: dict[str, float] = field(default_factory=dict)  # outer steps each present peer is behind
    copies: list[CopyFinding] = field(default_factory=list)
    chosen: list[str] = field(default_factory=list)  # loss-tested this window
    tests: dict[str, LossTest] = field(default_factory=dict)
    why: dict[str, dict] = field(default_factory=dict)  # every peer's factors (scores.jsonl, the record)
    applied: list[str] = field(default_factory=list)  # hotkeys aggregated, canonical order
    fingerprint: str | None = None  # of the weights after the window's outer step
    weights: dict[int, float] | None = None  # set on chain this window
    durations: dict[str, float] = field(default_factory=dict)
    published_bytes: int = 0

    @property
    def present(self) -> list[str]:
        return sorted(self.result.messages)

    def lap(self, name: str) -> None:
        """Note the seconds since the evaluation started under ``name``."""
        self.durations[name] = round(time.time() - self.started, 3)


class Validator(Node):
    ROLE = "validator"

    def __init__(self, cfg: GauntletConfig, identity: Identity, chain: Chain, store: ObjectStore,
                 opts: NodeOptions, eval_secret: bytes | None = None,
                 behaviour: ValidatorBehaviour | None = None) -> None:
        super().__init__(cfg, identity, chain, store, opts)
        self.behaviour = behaviour or ValidatorBehaviour()
        saved = book_from_meta(self.engine.state.load(str(opts.run_dir), STATE_NAME), opts.run_dir)
        self.book = saved or ValidatorBook(secret=(eval_secret or os.urandom(32)).hex())
        self.scores = open(opts.run_dir / "scores.jsonl", "a", encoding="utf-8")  # one JSON line per peer a window
        self.spool = Spool(opts.run_dir / "spool", self.spec, cfg.sparseloco)

    # ----------------------------------------------------------------------------------- a window

    def evaluate_window(self, window: int) -> dict:
        """Everything the validator does for ``window``; call after its upload slot has closed."""
        ev = Evaluation(window, self.directory.view())
        if not self.behaviour.evaluates:  # it only sets weights (a copier, a lazy validator)
            return self._weights_only(ev)
        self.spool.keep_only(window)  # what an interrupted evaluation of an earlier window left
        self._gather(ev)
        self._check_sync(ev)
        self._detect_copies(ev)
        ev.lap("stage1_s")
        self._test_losses(ev)
        ev.lap("loss_tests_s")
        self._rate(ev)
        self._apply(ev)
        self._publish_peer_list(ev)
        self._set_weights(ev)
        self._publish_checkpoint(ev)
        record = self._publish_record(ev)
        self._write_scores(ev)
        self._save(ev)
        log.info("window %d: %d present, %d tested, %d copies, %d aggregated, fingerprint %s", window,
                 len(ev.present), len(ev.tests), len(ev.copies), len(ev.applied), record["fingerprint"][:12])
        return record

    # ------------------------------------------------------------------------------------ stage 1

    def _gather(self, ev: Evaluation) -> None:
        """Every committed peer's message; valid ones wait on disk (decoded one peer at a time later)."""
        ev.result = r = self.gather_retrying(ev.window, use_list=False, network=ev.network, spool=self.spool,
                                             norms=True)  # the loss test measures updates at the median norm
        # the rule every peer applies — the leader's list, or the next validator's by stake when it was
        # not in time (a StorageError here comes before anything is scored: the window is evaluated again)
        ev.choice = self.feed.choose_list(ev.window)
        ev.failed = {h: "missing" for h in r.missing}
        ev.failed.update({h: "late" for h in r.outside_slot})
        ev.failed.update({h: f"invalid: {why}" for h, why in r.invalid.items()})

    def _check_sync(self, ev: Evaluation) -> None:
        """For each present peer, outer steps between its published weight sample and ours."""
        ev.reference = self.engine.measure.weight_sample(self.cfg.validator.weight_sample, self.cfg.seed)
        for hotkey in ev.result.messages:
            if self.book.records.get(hotkey) is None or ev.window == 0:
                ev.behind[hotkey] = 0.0  # a newcomer has nothing to compare yet
                continue
            try:
                key = keys.fingerprint(self.run, ev.window - 1, hotkey)
                raw = json.loads(ev.network.stores[hotkey].get(key, max_bytes=1 << 20))
                sample = [float(v) for v in raw["sample"]]
            except (ObjectNotFound, ObjectTooLarge, KeyError, TypeError, ValueError):
                ev.behind[hotkey] = math.inf  # no usable sample: cannot show it is in sync
                continue
            except StorageError as exc:  # unreachable: the infrastructure's fault, not evidence against the peer
                log.warning("window %d: cannot read the weight sample of %s: %s", ev.window, hotkey[:12], exc)
                ev.behind[hotkey] = math.nan
                continue
            ev.behind[hotkey] = steps_behind(sample, ev.reference, self.book.typical_step)

    def _detect_copies(self, ev: Evaluation) -> None:
        """Overlap and value similarity of every pair, on chunks drawn from this validator's secret
        (read straight from each stored message; see :mod:`gauntlet.uniqueness.sampled`); then the
        peers to loss-test, binned by rating, least recently tested first."""
        v, present = self.cfg.validator, ev.present
        if len(present) > 1:
            seed = sample_seed(bytes.fromhex(self.book.secret), ev.window)
            sample = draw_sample(self.spec, self.cfg.sparseloco, v.copy_sample_chunks, seed)
            with cf.ThreadPoolExecutor(4, thread_name_prefix="copy-sample") as pool:  # page faults overlap
                pairs = list(pool.map(lambda h: read_message_sample(ev.result.messages[h], sample), present))
            log.debug("window %d: copy detection on %d of %d chunks", ev.window, sample.chunks, sample.total_chunks)
            stats = pair_stats(torch.stack([k for k, _ in pairs]), torch.stack([x for _, x in pairs]))
            ev.copies = find_copies(present, stats, ev.result.times, threshold=v.copy_threshold,
                                    value_similarity=v.copy_value_similarity)
        offenders = {c.offender for c in ev.copies}
        candidates = [h for h in present if h not in offenders and self._not_banned(h, ev.window)]
        ordinals = {h: r.ordinal for h, r in self.book.records.items()}
        last_eval = {h: r.last_eval for h, r in self.book.records.items()}
        ev.chosen = choose_for_eval(candidates, ordinals, last_eval, v.eval_peers, v.eval_bins)

    # ------------------------------------------------------------------------------------ stage 2

    def _test_losses(self, ev: Evaluation) -> None:
        """Each chosen peer's update alone — brought to the window's median norm per tensor, then
        scaled — on its own assigned data and the window's random data."""
        self.metrics.set_phase("evaluating")
        v, window = self.cfg.validator, ev.window
        salt = hashlib.sha256(bytes.fromhex(self.book.secret) + b"|random").hexdigest()
        per_batch = self.cfg.train.batch_size
        random = self.data.random_batches(window, max(1, v.eval_random_sequences // per_batch), salt=salt)
        random_before = self.engine.measure.mean_loss(random)
        scale = v.eval_lr_factor * self.cfg.sparseloco.outer_lr
        # every update measured at the window's median norm per tensor (the size the aggregate clips
        # bigger ones to): multiplying an update changes nothing the test sees
        norm_to = median_norms(list(ev.result.norms.values())) if self.cfg.sparseloco.clip_to_median else None
        for hotkey in ev.chosen:
            own_idx = own_eval_indices(self.data.assigned(window, hotkey), v.eval_own_sequences, self.cfg.seed, window)
            ev.tests[hotkey] = self.engine.measure.test_update(ev.result.messages[hotkey], scale,
                                                               self.data.batches(own_idx), random, random_before,
                                                               norm_to)

    # ------------------------------------------------------------------------------------ the book

    def _rate(self, ev: Evaluation) -> None:
        """Penalties, moving averages, one OpenSkill match and final scores for the window."""
        outcome = WindowOutcome(ev.window, set(ev.present), ev.failed, ev.behind, ev.copies, ev.tests,
                                unreachable=ev.result.failed)
        self.book.records, ev.why = update_book(self.book.records, outcome, self.cfg.validator)

    def _not_banned(self, hotkey: str, window: int) -> bool:
        rec = self.book.records.get(hotkey)
        return rec is None or rec.banned_until < window

    # ------------------------------------------------------------------------------------ the model

    def _apply(self, ev: Evaluation) -> None:
        """The aggregate every peer applies (the peers of the list that governs the window, see
        :meth:`ValidatorFeed.choose_list`), the outer step, and the replay list published: the ids of
        the messages applied, from which a node that missed the window applies the same aggregate."""
        window, followed = ev.window, ev.choice.followed
        members = ev.present if followed is None else select(followed, ev.result.messages, self.cfg.sparseloco.top_g)
        ev.applied = sorted(members)
        if ev.applied:
            self.metrics.set_phase("applying")
            started = time.monotonic()
            self.engine.updates.apply([ev.result.messages[h] for h in ev.applied])
            self.metrics.outer_seconds.set(time.monotonic() - started)
        ev.fingerprint = self.engine.measure.fingerprint()
        listed = [(h, message_id(ev.result.messages[h])) for h in ev.applied]
        self._publish(ev, keys.replay(self.run, window), encode_replay(window, listed, ev.fingerprint,
                                                                       run=self.run_hash, signer=self.identity))
        self.spool.keep_only(None)
        after = self.engine.measure.weight_sample(self.cfg.validator.weight_sample, self.cfg.seed)
        step = sum(abs(a - b) for a, b in zip(after, ev.reference)) / len(after)
        self.book.typical_step = step if self.book.typical_step == 0 else 0.9 * self.book.typical_step + 0.1 * step

    # ------------------------------------------------------------------------------------ outputs

    def _publish_peer_list(self, ev: Evaluation) -> None:
        """The list for the next window: of the peers whose evaluations show they help (see
        :meth:`_helps`), the best G by final score, then reserves. Open — every valid message counts —
        until the first peer qualifies; after that it names only qualified peers, even none."""
        g, reserves, window = self.cfg.sparseloco.top_g, self.cfg.validator.reserves, ev.window
        records = self.book.records
        best = max((r.final for r in records.values()), default=0.0)
        ranked = sorted((h for h in ev.present if self._helps(h, ev, best)),
                        key=lambda h: (-records[h].final, -records[h].ordinal, h))
        if ranked and self.book.first_list < 0:
            self.book.first_list = window + 1
            log.info("window %d: the first peer list names %d peers; from now on only listed peers are aggregated",
                     window + 1, min(len(ranked), g))
        key = keys.peer_list(self.run, window + 1)
        try:
            if self.store.head(key) is not None:
                return  # this window evaluated again after a crash: the first list stored stands (its time decides)
        except StorageError as exc:
            log.warning("window %d: cannot check for a stored peer list (%s); publishing it", window, exc)
        # published every window: a missing list always means "not out yet"
        self._publish(ev, key, encode_peer_list(window + 1, ranked[:g], ranked[g : g + reserves], run=self.run_hash,
                                                signer=self.identity, open=self.book.first_list < 0))

    def _helps(self, hotkey: str, ev: Evaluation, best_final: float) -> bool:
        """Whether ``hotkey``'s evaluations show that its updates help: a valid message in the slot this
        window, in sync, no copy finding, not banned; a positive score in its last loss test, a
        uniqueness moving average of at least ``validator.list_min_ma``, and a final score of at least
        ``validator.list_min_final_ratio`` of the best one (``best_final``)."""
        rec, why, v = self.book.records[hotkey], ev.why[hotkey], self.cfg.validator
        behind = why.get("steps_behind")
        return (why.get("status") == "present" and "copy" not in why and not why.get("banned")
                and (behind == "unknown" or isinstance(behind, (int, float)) and behind <= v.sync_penalty_steps)
                and rec.last_score > 0 and rec.ma >= v.list_min_ma
                and rec.final > 0 and rec.final >= v.list_min_final_ratio * best_final)

    def _set_weights(self, ev: Evaluation) -> None:
        """Every ``weights_every`` windows, and at the last window before stopping: the weights the
        scores give, as the behaviour passes them on (the honest one unchanged)."""
        v = self.cfg.validator
        if (ev.window + 1) % v.weights_every and ev.window != self.opts.stop_after_window:
            return
        uids = ev.network.uids
        finals = {uids[h]: r.final for h, r in self.book.records.items() if h in uids}
        proposed = policy_weights(finals, v) if self.behaviour.evaluates else None
        ev.weights = self.behaviour.weights(self._weights_context(ev), proposed or None)
        if ev.weights:
            try:
                self.chain.set_weights(self.identity, ev.weights)
            except ChainError as exc:
                log.error("window %d: setting weights failed: %s", ev.window, exc)

    def _weights_context(self, ev: Evaluation) -> WeightsContext:
        uids = ev.network.uids
        stakes = {uids[h]: stake for h, stake in ev.network.stakes.items()}  # read with the network
        seed = int.from_bytes(hashlib.sha256(f"{self.book.secret}|weights|{ev.window}".encode()).digest()[:8], "big")
        return WeightsContext(ev.window, self.identity.hotkey, uids[self.identity.hotkey], dict(uids),
                              sorted(uids[h] for h in ev.network.stores if h in uids), stakes, self.chain.weights,
                              random.Random(seed))

    def _weights_only(self, ev: Evaluation) -> dict:
        """A window of a validator that evaluates nothing: weights on schedule, the state saved."""
        self._set_weights(ev)
        self.book.window = ev.window
        self._save_state()
        ev.lap("total_s")
        self.metrics.finished(ev.window, time.time() - ev.started)
        log.info("window %d: evaluated nothing (%s)%s", ev.window, self.behaviour.name,
                 "; weights set" if ev.weights else "")
        return {"window": ev.window, "fingerprint": None, "aggregated": [], "peers": {},
                "weights": {str(u): w for u, w in (ev.weights or {}).items()}, "durations": dict(ev.durations)}

    def _publish_checkpoint(self, ev: Evaluation) -> None:
        """Every ``checkpoint_every`` windows: the whole weights, written to a local file tensor by
        tensor and uploaded from it (no copy of the checkpoint in memory)."""
        if (ev.window + 1) % self.cfg.validator.checkpoint_every:
            return
        key, path = keys.checkpoint(self.run, ev.window), self.opts.run_dir / ".checkpoint.partial"
        try:
            ev.published_bytes += write_artefact(path, "checkpoint", self.engine.state.full_state(),
                                                 run=self.run_hash, window=ev.window, signer=self.identity)
            self.store.put_file(key, path)
        except (StorageError, OSError) as exc:
            log.error("could not publish %s: %s", key, exc)
        finally:
            path.unlink(missing_ok=True)

    def _publish_record(self, ev: Evaluation) -> dict:
        """The signed window record, hash-chained to the previous one (its head committed on chain at
        each checkpoint and after the first window)."""
        ev.lap("total_s")
        record = self._record(ev)
        data, head = seal(record, self.book.record_head, self.identity)
        self._publish(ev, keys.record(self.run, ev.window), data)
        self.book.record_head = head
        if (ev.window + 1) % self.cfg.validator.checkpoint_every == 0 or ev.window == 0:
            self._commit_head(ev.window)
        return record

    def _record(self, ev: Evaluation) -> dict:
        declared = {h: {str(k)[:64]: str(v)[:256] for k, v in list(m.header.extra.get("declared").items())[:16]}
                    for h, m in ev.result.messages.items() if isinstance(m.header.extra.get("declared"), dict)
                    and m.header.extra.get("declared")}
        return {"v": 1, "run": self.run_hash, "run_name": self.run, "window": ev.window, "time": time.time(),
                "model": {"preset": self.cfg.model.preset, "parameters": sum(math.prod(s) for s in self.spec.values())},
                "config": self.run_hash, "fingerprint": ev.fingerprint, "aggregated": ev.applied,
                "followed": {"validator": ev.choice.validator, "rule": ev.choice.rule,
                             "list_window": ev.choice.list_window, "failover": ev.choice.failover},
                "peers": {h: {k: v for k, v in ev.why[h].items() if k != "window"} for h in sorted(ev.why)},
                "declared": declared, "weights": {str(u): w for u, w in (ev.weights or {}).items()},
                "durations": dict(ev.durations)}

    def _commit_head(self, window: int) -> None:
        card = self.opts.card
        if card is None:
            return
        noted = BucketCard(card.scheme, card.location, card.bucket, card.region, card.access_key, card.secret_key,
                           note=f"record:{window}:{self.book.record_head}")
        try:
            self.chain.commit(self.identity, noted.encode())
        except (ChainError, ValueError) as exc:
            log.error("window %d: could not commit the record head: %s", window, exc)

    def _publish(self, ev: Evaluation, key: str, data: bytes) -> None:
        ev.published_bytes += len(data)
        try:
            self.store.put(key, data)
        except StorageError as exc:
            log.error("could not publish %s: %s", key, exc)

    def _write_scores(self, ev: Evaluation) -> None:
        for hotkey in sorted(ev.why):
            self.scores.write(json.dumps({"hotkey": hotkey, "uid": ev.network.uids.get(hotkey), **ev.why[hotkey]}) + "\n")
        self.scores.flush()

    def _save(self, ev: Evaluation) -> None:
        """The state (atomically), then the window's metrics and the pruning of old objects."""
        self.book.window = ev.window
        self.metrics.set_phase("saving")
        started = time.monotonic()
        self._save_state()
        self.metrics.save_seconds.set(time.monotonic() - started)
        self.metrics.state_bytes.set(state_size(self.opts.run_dir, STATE_NAME))
        by_uid = {u: h for h, u in ev.network.uids.items()}
        self.metrics.peer_scores({h: r.final for h, r in self.book.records.items()}, None if ev.weights is None else
                                 {by_uid[u]: w for u, w in ev.weights.items() if u in by_uid})
        self.metrics.bucket_window_bytes.set(ev.published_bytes)
        self.prune(ev.window)
        self.metrics.finished(ev.window, time.time() - ev.started)

    def _save_state(self) -> None:
        self.engine.state.save(str(self.opts.run_dir), STATE_NAME, max(self.book.window, 0), book_meta(self.book),
                               self.opts.durable)

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.behaviour.evaluates:  # one that publishes nothing has no bucket for anyone to read
            self.directory.publish_card(self.opts.card)
        self.clock.wait_for_genesis()

    def run_forever(self) -> None:
        """Evaluate each window once its slot has closed (until ``stop_after_window``, or a stop
        request: SIGTERM / Ctrl-C end the loop at its next wait, between windows)."""
        try:
            self.start()
            self.prune(self.book.window, everything=True)  # what piled up while this validator was away
            self.metrics.finished(self.book.window)
            self.start_metrics()
            self._loop()
        except StopRequested as stop:
            log.info("stopping (%s); the state of window %d is saved", stop, self.book.window)
        finally:
            self.stop_metrics()
            self.scores.close()
            self.engine.stop()

    def _loop(self) -> None:
        if self.book.window < 0:  # a fresh validator starts with the window that just closed, and says so
            self.book.window = max(0, self.clock.current_window() - 1) - 1
            self._save_state()  # so that a crash cannot move that start later
        nxt, evaluated, warned = self.book.window + 1, 0, False
        stop = self.opts.stop_after_window
        if (crash := self.behaviour.stops_after(stop)) is not None and (stop is None or crash < stop):
            stop = crash
            log.warning("this validator's behaviour (%s) stops it after window %d", self.behaviour.name, crash)
        while stop is None or nxt <= stop:
            self.clock.wait_until(self.clock.slot(nxt)[1])
            try:
                record = self.evaluate_window(nxt)
            except InvalidMessage as exc:  # never crash on what peers send
                log.error("window %d: %s", nxt, exc)
            except (ChainError, StorageError) as exc:
                # nothing was scored or applied yet (the network is read first): evaluate the window
                # again later — its messages keep their upload times, so the result is the same
                log.error("window %d: %s; retrying in %.0f s", nxt, exc, self.RETRY_S)
                self.clock.sleep(self.RETRY_S)
                continue
            else:
                evaluated += 1
                if evaluated >= 2 and not warned:  # the first evaluation pays one-time costs
                    warned = self._check_fit(nxt, record["durations"]["total_s"])
            nxt += 1

    def _check_fit(self, window: int, seconds: float) -> bool:
        """The evaluation of window ``w`` starts when its upload slot closes and must store the list
        for ``w+1`` by that list's deadline; say so — once — when it takes more than 80 % of that
        time. Returns whether it warned."""
        t = self.cfg.timing
        budget = self.clock.list_deadline(window + 1) - self.clock.slot(window)[1]
        if not math.isfinite(budget) or seconds <= 0.8 * budget:
            return False
        block_s = (self.clock.window_start(window + 2) - self.clock.window_start(window + 1)) / t.blocks_per_window
        log.warning("this validator cannot keep up with the windows: evaluating window %d took %.1f s of the %.1f s "
                    "between the close of its upload slot and the deadline of the next peer list, so peers will "
                    "miss its lists. It needs timing.blocks_per_window >= %d at this speed, or fewer loss tests per "
                    "window (validator.eval_peers=%d).", window, seconds, budget,
                    math.ceil((seconds / 0.8 + t.upload_slot_s) / block_s), self.cfg.validator.eval_peers)
        return True
