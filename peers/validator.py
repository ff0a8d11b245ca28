"""The validator node (PROTOCOL §4–6): score every peer, rate, set weights, publish what keeps the
network in sync, and explain every decision.

Each window ``w``, after its upload slot has closed (:meth:`Validator.evaluate_window`):

1. gather every committed peer's message (stage 1: presence in the slot, validity, signature, run,
   window) and read each present peer's weight sample to measure how many outer steps behind it is;
2. copy detection over all valid messages (index overlap and value similarity; the later uploader
   is the offender);
3. stage 2, the loss test, for a sample binned by rating (least recently tested first): the peer's
   update alone, scaled, on its own assigned data and on the window's shared random data;
4. the book update: penalties, moving averages, one OpenSkill match, final scores (one JSONL line
   per peer in ``scores.jsonl`` with every factor);
5. the aggregate of the listed peers (the same rule every peer applies) and the outer step;
   publish the aggregate, the peer list for ``w+1``, a checkpoint every N windows and the signed,
   hash-chained window record; set weights on chain every K windows; save the state atomically.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import math
import os
import time

import torch

from gauntlet.chain import Chain
from gauntlet.config import GauntletConfig
from gauntlet.errors import (
    ChainError,
    InvalidMessage,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
)
from gauntlet.identity import Identity
from gauntlet.rating import WindowOutcome, power_weights, tiered_weights, update_book
from gauntlet.scoring import steps_behind
from gauntlet.scoring.sampling import choose_for_eval
from gauntlet.storage import BucketCard, ObjectStore, keys
from gauntlet.uniqueness import CopyStats, find_copies, own_eval_indices
from gauntlet.uniqueness.copying import pair_stats
from gauntlet.uniqueness.sampled import draw_sample, sample_seed
from peers.artefacts import encode_artefact
from peers.gather import GatherResult
from peers.node import Node, NodeOptions, StopRequested
from peers.peer_list import PeerList, encode_peer_list, select
from peers.records import seal
from peers.spool import Spool, read_message_sample
from peers.state import state_size
from peers.validator_state import NAME as STATE_NAME
from peers.validator_state import ValidatorBook, book_from_meta, book_meta

log = logging.getLogger("gauntlet.validator")


class Validator(Node):
    ROLE = "validator"
    def __init__(self, cfg: GauntletConfig, identity: Identity, chain: Chain, store: ObjectStore,
                 opts: NodeOptions, eval_secret: bytes | None = None) -> None:
        super().__init__(cfg, identity, chain, store, opts)
        saved = book_from_meta(self.engine.load_state(str(opts.run_dir), STATE_NAME), opts.run_dir)
        self.book = saved or ValidatorBook(secret=(eval_secret or os.urandom(32)).hex())
        self._scores = open(opts.run_dir / "scores.jsonl", "a", encoding="utf-8")
        self.spool = Spool(opts.run_dir / "spool", self.spec, cfg.sparseloco)

    # ------------------------------------------------------------------------------------ stage 1

    def _steps_behind(self, result: GatherResult, window: int, reference: list[float],
                      sources: dict[str, ObjectStore]) -> dict[str, float]:
        """For each present peer, outer steps between its published weight sample and ours."""
        out = {}
        for hotkey in result.messages:
            if self.book.records.get(hotkey) is None or window == 0:
                out[hotkey] = 0.0  # a newcomer has nothing to compare yet
                continue
            try:
                raw = json.loads(sources[hotkey].get(keys.fingerprint(self.run, window - 1, hotkey), max_bytes=1 << 20))
                sample = [float(v) for v in raw["sample"]]
            except (ObjectNotFound, ObjectTooLarge, KeyError, TypeError, ValueError):
                out[hotkey] = math.inf  # no usable sample: cannot show it is in sync
                continue
            except StorageError as exc:  # unreachable: the infrastructure's fault, not evidence against the peer
                log.warning("window %d: cannot read the weight sample of %s: %s", window, hotkey[:12], exc)
                out[hotkey] = math.nan
                continue
            out[hotkey] = steps_behind(sample, reference, self.book.typical_step)
        return out

    def _copy_stats(self, window: int, result: GatherResult, present: list[str]) -> CopyStats:
        """Overlap and value similarity of every pair, on chunks drawn from this validator's secret
        (read straight from each stored message; see :mod:`gauntlet.uniqueness.sampled`)."""
        seed = sample_seed(bytes.fromhex(self.book.secret), window)
        sample = draw_sample(self.spec, self.cfg.sparseloco, self.cfg.validator.copy_sample_chunks, seed)
        with cf.ThreadPoolExecutor(4, thread_name_prefix="copy-sample") as pool:  # page faults overlap
            pairs = list(pool.map(lambda h: read_message_sample(result.messages[h], sample), present))
        log.debug("window %d: copy detection on %d of %d chunks", window, sample.chunks, sample.total_chunks)
        return pair_stats(torch.stack([k for k, _ in pairs]), torch.stack([x for _, x in pairs]))

    # ------------------------------------------------------------------------------------ stage 2

    def _loss_tests(self, window: int, result: GatherResult, chosen: list[str]) -> dict:
        v = self.cfg.validator
        salt = hashlib.sha256(bytes.fromhex(self.book.secret) + b"|random").hexdigest()
        per_batch = self.cfg.train.batch_size
        random = self.random_batches(window, max(1, v.eval_random_sequences // per_batch), salt=salt)
        random_before = self.engine.mean_loss(random)
        scale = v.eval_lr_factor * self.cfg.sparseloco.outer_lr
        tests = {}
        for hotkey in chosen:
            own_idx = own_eval_indices(self.assigned(window, hotkey), v.eval_own_sequences, self.cfg.seed, window)
            tests[hotkey] = self.engine.test_update(result.messages[hotkey], scale, self.batches(own_idx), random,
                                                    random_before)
        return tests

    # ------------------------------------------------------------------------------------ outputs

    def _weights(self, uids: dict[str, int]) -> dict[int, float]:
        v = self.cfg.validator
        finals = {uids[h]: r.final for h, r in self.book.records.items() if h in uids}
        if v.policy == "power":
            return power_weights(finals, v.power_p)
        ranked = [u for u, f in sorted(finals.items(), key=lambda kv: (-kv[1], kv[0])) if f > 0]
        return tiered_weights(ranked, burn_uid=v.burn_uid, burn_share=v.burn_share, top=v.tier_top,
                              top_share=v.tier_top_share, ramp=v.tier_ramp, next_n=v.tier_next, decay=v.tier_decay)

    def _next_list(self, window: int) -> dict:
        g, reserves = self.cfg.sparseloco.top_g, self.cfg.validator.reserves
        eligible = [h for h, r in self.book.records.items() if r.banned_until < window and r.last_seen >= window - 1]
        ranked = sorted(eligible, key=lambda h: (-self.book.records[h].final, -self.book.records[h].ordinal, h))
        return {"window": window + 1, "peers": ranked[:g], "reserves": ranked[g : g + reserves]}

    def _publish(self, key: str, data: bytes) -> None:
        self._published_bytes += len(data)
        try:
            self.store.put(key, data)
        except StorageError as exc:
            log.error("could not publish %s: %s", key, exc)

    # ----------------------------------------------------------------------------------- a window

    def evaluate_window(self, window: int) -> dict:
        """Everything the validator does for ``window``; call after its upload slot has closed."""
        t0 = time.time()
        self._published_bytes = 0
        v = self.cfg.validator
        network = self.network()  # read once per window: on Bittensor each read is a round trip
        sources, _, uids = network
        self.spool.keep_only(window)  # what an interrupted evaluation of an earlier window left
        # stage 1: every committed peer; valid messages wait on disk, one peer is decoded at a time later
        result = self.gather_retrying(window, use_list=False, network=network, spool=self.spool)
        failed = {h: "missing" for h in result.missing}
        failed.update({h: "late" for h in result.outside_slot})
        failed.update({h: f"invalid: {why}" for h, why in result.invalid.items()})
        reference = self.engine.weight_sample(v.weight_sample, self.cfg.seed)
        behind = self._steps_behind(result, window, reference, sources)

        present = sorted(result.messages)
        stats = self._copy_stats(window, result, present) if len(present) > 1 else None
        copies = find_copies(present, stats, result.times, threshold=v.copy_threshold,
                             value_similarity=v.copy_value_similarity) if stats is not None else []
        offenders = {c.offender for c in copies}
        candidates = [h for h in present if h not in offenders and self._not_banned(h, window)]
        ordinals = {h: r.ordinal for h, r in self.book.records.items()}
        last_eval = {h: r.last_eval for h, r in self.book.records.items()}
        chosen = choose_for_eval(candidates, ordinals, last_eval, v.eval_peers, v.eval_bins)
        t1 = time.time()
        self.metrics.set_phase("evaluating")
        tests = self._loss_tests(window, result, chosen)
        t2 = time.time()

        outcome = WindowOutcome(window, set(present), failed, behind, copies, tests, unreachable=result.failed)
        self.book.records, why = update_book(self.book.records, outcome, v)

        listed = self.book.listed if self.book.listed and self.book.listed["window"] == window else None
        if listed is not None and not self._list_in_time(window):
            listed = None  # published late: the peers aggregated every valid message, so does the validator
        if listed is not None:
            members = select(PeerList(window, self.identity.hotkey, tuple(listed["peers"]),
                                      tuple(listed["reserves"])), result.messages, self.cfg.sparseloco.top_g)
        else:
            members = present
        applied = sorted(members)
        if applied:
            self.metrics.set_phase("applying")
            started = time.monotonic()
            agg = self.engine.apply([result.messages[h] for h in applied], want_full=True)
            self.metrics.outer_seconds.set(time.monotonic() - started)
            self._publish(keys.aggregate(self.run, window),
                          encode_artefact("aggregate", agg, run=self.run_hash, window=window, signer=self.identity))
        self.spool.keep_only(None)
        after = self.engine.weight_sample(v.weight_sample, self.cfg.seed)
        step = sum(abs(a - b) for a, b in zip(after, reference)) / len(after)
        self.book.typical_step = step if self.book.typical_step == 0 else 0.9 * self.book.typical_step + 0.1 * step

        nxt = self._next_list(window)
        self.book.listed = nxt if nxt["peers"] else None  # nobody eligible yet: everyone counts
        # published every window, empty or not: a missing list then always means "not out yet"
        self._publish(keys.peer_list(self.run, window + 1), encode_peer_list(
            window + 1, nxt["peers"], nxt["reserves"], run=self.run_hash, signer=self.identity))
        weights = None
        if (window + 1) % v.weights_every == 0 or window == self.opts.stop_after_window:  # and before stopping
            weights = self._weights(uids)
            if weights:
                try:
                    self.chain.set_weights(self.identity, weights)
                except ChainError as exc:
                    log.error("window %d: setting weights failed: %s", window, exc)
        if (window + 1) % v.checkpoint_every == 0:
            self._publish(keys.checkpoint(self.run, window), encode_artefact(
                "checkpoint", self.engine.full_state(), run=self.run_hash, window=window, signer=self.identity))

        record = self._record(window, result, why, applied, weights, uids, durations={
            "stage1_s": round(t1 - t0, 3), "loss_tests_s": round(t2 - t1, 3), "total_s": round(time.time() - t0, 3)})
        data, head = seal(record, self.book.record_head, self.identity)
        self._publish(keys.record(self.run, window), data)
        self.book.record_head = head
        if (window + 1) % v.checkpoint_every == 0 or window == 0:
            self._commit_head(window)
        for hotkey in sorted(why):
            self._scores.write(json.dumps({"hotkey": hotkey, "uid": uids.get(hotkey), **why[hotkey]}) + "\n")
        self._scores.flush()
        self.book.window = window
        self.metrics.set_phase("saving")
        started = time.monotonic()
        self._save()
        self.metrics.save_seconds.set(time.monotonic() - started)
        self.metrics.state_bytes.set(state_size(self.opts.run_dir, STATE_NAME))
        by_uid = {u: h for h, u in uids.items()}
        self.metrics.peer_scores({h: r.final for h, r in self.book.records.items()},
                                 None if weights is None else {by_uid[u]: w for u, w in weights.items() if u in by_uid})
        self.metrics.bucket_window_bytes.set(self._published_bytes)
        self.prune(window)
        self.metrics.finished(window, time.time() - t0)
        log.info("window %d: %d present, %d tested, %d copies, %d aggregated, fingerprint %s", window, len(present),
                 len(tests), len(copies), len(applied), record["fingerprint"][:12])
        return record

    def _list_in_time(self, window: int) -> bool:
        """Whether this validator's peer list for ``window`` was stored by :meth:`list_deadline`."""
        info = self.store.head(keys.peer_list(self.run, window))  # None when it was never stored
        return info is not None and info.last_modified <= self.list_deadline(window)

    def _save(self) -> None:
        self.engine.save_state(str(self.opts.run_dir), STATE_NAME, max(self.book.window, 0), book_meta(self.book),
                               self.opts.durable)

    def _not_banned(self, hotkey: str, window: int) -> bool:
        rec = self.book.records.get(hotkey)
        return rec is None or rec.banned_until < window

    def _record(self, window, result, why, applied, weights, uids, durations) -> dict:
        declared = {h: {str(k)[:64]: str(v)[:256] for k, v in list(m.header.extra.get("declared").items())[:16]}
                    for h, m in result.messages.items() if isinstance(m.header.extra.get("declared"), dict)
                    and m.header.extra.get("declared")}
        return {"v": 1, "run": self.run_hash, "run_name": self.run, "window": window, "time": time.time(),
                "model": {"preset": self.cfg.model.preset, "parameters": sum(math.prod(s) for s in self.spec.values())},
                "config": self.cfg.run_hash(), "fingerprint": self.engine.fingerprint(), "aggregated": applied,
                "peers": {h: {k: v for k, v in why[h].items() if k != "window"} for h in sorted(why)},
                "declared": declared, "weights": {str(u): w for u, w in (weights or {}).items()},
                "durations": durations}

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

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.publish_card()
        self.wait_for_genesis()

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
            self._scores.close()
            self.engine.stop()

    def _loop(self) -> None:
        if self.book.window < 0:  # a fresh validator starts with the window that just closed, and says so
            self.book.window = max(0, self.current_window() - 1) - 1
            self._save()  # so that a crash cannot move that start later
        nxt, fit_checked = self.book.window + 1, False
        stop = self.opts.stop_after_window
        while stop is None or nxt <= stop:
            self.wait_until(self.slot(nxt)[1])
            try:
                record = self.evaluate_window(nxt)
            except InvalidMessage as exc:  # never crash on what peers send
                log.error("window %d: %s", nxt, exc)
            except (ChainError, StorageError) as exc:
                # nothing was scored or applied yet (the network is read first): evaluate the window
                # again later — its messages keep their upload times, so the result is the same
                log.error("window %d: %s; retrying in %.0f s", nxt, exc, self.RETRY_S)
                self.sleep(self.RETRY_S)
                continue
            else:
                if not fit_checked:
                    fit_checked = True
                    self._check_fit(nxt, record["durations"]["total_s"])
            nxt += 1

    def _check_fit(self, window: int, seconds: float) -> None:
        """The evaluation of a window must end within a window (peers gather the next window with
        the list it publishes); say so when it takes most of one."""
        window_s = self.window_start(window + 2) - self.window_start(window + 1)
        if not math.isfinite(window_s) or seconds <= 0.8 * window_s:
            return
        log.warning("evaluating window %d took %.1f s of a %.1f-s window: this validator will fall behind and "
                    "peers will miss its peer lists. It needs timing.blocks_per_window >= %d at this speed, or "
                    "fewer loss tests per window (validator.eval_peers=%d).", window, seconds, window_s,
                    math.ceil(seconds / 0.8 / (window_s / self.cfg.timing.blocks_per_window)),
                    self.cfg.validator.eval_peers)
