"""The peer node (docs/protocol.md §2–3): train on the assigned data, publish, gather, aggregate, step.

Timeline of window ``w`` (the chain's clock; ``start(w)`` is the time of block ``w · blocks_per_window``):

1. from θ_w (weights with every window before ``w`` applied) the behaviour trains ``inner.steps``
   batches of the sequences assigned to this hotkey and returns Δ; error feedback compresses it;
2. at ``start(w+1)`` the signed message is uploaded (the slot is judged by the store's clock);
3. when the slot has closed, every peer's message for ``w`` is gathered, validated and aggregated in
   hotkey order, and the outer step gives θ_{w+1}; the peer publishes its weight fingerprint,
   logs a metrics line and saves its local state (atomic);
4. it then trains window ``w+1`` from θ_{w+1}.

A peer that is behind (restarted, started late) applies the windows it missed by gathering their
messages — the same rule, the same result — without training them; a crash at any point resumes
from the last saved window with its error-feedback state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gauntlet.chain import Chain
from gauntlet.config import GauntletConfig
from gauntlet.errors import ChainError, ConfigError, InvalidMessage, StorageError
from gauntlet.identity import Identity
from gauntlet.sparseloco import encode_message
from gauntlet.storage import ObjectStore, keys
from gauntlet.uniqueness import assigned_indices
from peers.behaviours import Behaviour, WindowContext
from peers.network.explain import window_line
from peers.network.gather import GatherResult
from peers.network.replay import ReplayIncomplete, ReplayList, message_id
from peers.node.base import Node, NodeOptions
from peers.node.clock import StopRequested
from peers.node.state_files import LocalState, parse_state_meta, state_meta, state_size
from peers.ops.export import export_hf, push_to_hub

log = logging.getLogger("gauntlet.peer")


@dataclass
class PeerOptions(NodeOptions):
    declared: dict[str, str] | None = None  # e.g. hardware, provider, price: signed into every message
    export_hf: Path | None = None  # save_pretrained directory, refreshed after every export_every windows
    export_every: int = 0  # 0: only when the peer stops (--until-window)
    push_to_hub: str | None = None  # Hub repo to push each export to (off by default)


class Peer(Node):
    CATCH_UP_WINDOWS = 2  # replay up to this many missed windows; further behind, load a checkpoint
    TRAINS = True
    ROLE = "peer"

    def __init__(self, cfg: GauntletConfig, identity: Identity, chain: Chain, store: ObjectStore,
                 opts: PeerOptions, behaviour: Behaviour | None = None) -> None:
        super().__init__(cfg, identity, chain, store, opts)
        self.behaviour = behaviour or Behaviour()
        if self.engine.sharded and type(self.behaviour) is not Behaviour:
            raise ConfigError("a peer sharded over several ranks runs the honest behaviour only")
        self.training = self.engine.training
        self.val_batches = self.data.validation_batches(cfg.train.eval_batches)
        self.window_done = -1  # the last window whose outer step is applied
        self.last_aggregate: dict[str, torch.Tensor] | None = None
        self.train_loss: float | None = None  # of the last window trained
        self.in_sync = True  # False after a behaviour said it ignores the network this window (an adversary)
        self.window_log = open(opts.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # one JSON line a window

    def assigned_batches(self, window: int, hotkey: str | None = None) -> list[torch.Tensor]:
        return self.data.batches(self.data.assigned(window, hotkey or self.identity.hotkey))

    def load_checkpoint(self) -> bool:
        """Jump to the latest checkpoint ahead of our state, from the first validator in stake order
        that holds one."""
        for source in self.feed.sources():
            for window in reversed([w for w in self.feed.checkpoints(source) if w > self.window_done]):
                with tempfile.TemporaryDirectory(dir=self.opts.run_dir, prefix=".checkpoint-") as tmp:
                    try:  # downloaded to disk and loaded tensor by tensor: never the whole file in memory
                        tensors = self.feed.artefact(source, "checkpoint", keys.checkpoint(self.run, window), window,
                                                     Path(tmp) / "checkpoint.safetensors")
                        self.engine.updates.load_full(tensors)
                    except (StorageError, InvalidMessage) as exc:
                        log.warning("skipping checkpoint of window %d: %s", window, exc)
                        continue
                self.window_done = window
                self._event("checkpoint", window=window, validator=source[0])
                log.info("loaded validator %s's checkpoint of window %d", source[0][:12], window)
                return True
        return False

    # ------------------------------------------------------------------------------ one window

    def _train(self, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Inner steps from the current weights; returns Δ = θ₀ − θ (this rank's rows when sharded)
        and restores θ₀."""
        delta, self.train_loss = self.training.train(list(batches))
        return delta

    def context(self, window: int) -> WindowContext:
        def peer_updates(w: int) -> dict[str, dict[str, torch.Tensor]]:
            found = self.gather(w, in_slot=False)
            return {hk: {n: ct.to_dense() for n, ct in m.tensors.items()}
                    for hk, m in found.ordered() if hk != self.identity.hotkey}

        seed = int.from_bytes(hashlib.sha256(f"{self.cfg.seed}|{self.identity.hotkey}|{window}".encode()).digest()[:8],
                              "big")
        return WindowContext(window=window, hotkey=self.identity.hotkey, model=self.model, train=self._train,
                             assigned_batches=lambda: self.assigned_batches(window),
                             random_batches=lambda n: self.data.random_batches(window, n),
                             unassigned_batches=lambda n: self.data.batches(
                                 assigned_indices(seed, "own-choice", window, n * self.cfg.train.batch_size,
                                                  len(self.data.train_set))),
                             peer_updates=peer_updates,
                             previous_aggregate=lambda: self.last_aggregate, rng=random.Random(seed))

    def make_message(self, window: int) -> tuple[bytes | None, dict]:
        """Step 1: the behaviour's Δ for the window, compressed, signed (and maybe tampered with)."""
        started = time.monotonic()
        self.metrics.set_phase("training")
        self.train_loss = None
        ctx = self.context(window)
        delta = self.behaviour.pseudo_gradient(ctx)
        data = None
        if delta is not None:
            cts = self.training.compress(None if delta is self.training.delta else delta)
            data = encode_message(cts, window=window, run=self.run_hash, codec=self.cfg.sparseloco,
                                  signer=self.identity, extra={"declared": self.opts.declared or {}})
            data = self.behaviour.tamper(ctx, data)
        self.in_sync = self.behaviour.keeps_in_sync(ctx)
        return data, {"train_loss": self.train_loss, "bytes_sent": len(data) if data else 0,
                      "train_s": round(time.monotonic() - started, 3)}

    def upload(self, window: int, data: bytes | None) -> bool:
        """Step 2 (at the window boundary): put the message in this peer's bucket."""
        if data is None:
            return False
        self.metrics.set_phase("uploading")
        try:
            started = time.monotonic()
            self.store.put(keys.message(self.run, window, self.identity.hotkey), data)
            self.metrics.upload_seconds.set(time.monotonic() - started)
            self.metrics.upload_bytes.set(len(data))
            self.metrics.uploads.inc()
            return True
        except StorageError as exc:
            log.error("window %d: upload failed: %s", window, exc)
            return False

    def apply(self, window: int, prefer_published: bool = False) -> GatherResult:
        """Step 3 (after the slot): gather, aggregate, outer step. A peer catching up applies the
        messages the validator's replay list names (when there is one) instead of gathering every
        message. Raises ReplayIncomplete when a message the validator applied stays unreadable here:
        the window is then tried again, never applied from a partial view."""
        if not self.in_sync:  # a behaviour that ignores the network (an adversary)
            self.in_sync = True
            return GatherResult(window)
        if prefer_published and (replay := self.feed.replay(window)) is not None:
            return self._replay(replay, GatherResult(window))
        result = self.gather_retrying(window)
        if result.failed or result.list_unreadable:
            # Our view of the window is incomplete for the infrastructure's fault: applying it would
            # leave this peer out of sync. The validator's replay list names what the network applied.
            replay = self._await_replay(window)
            if replay is not None:
                return self._replay(replay, result)
            log.warning("window %d: %d messages unreadable and no validator's replay list; applying the %d read",
                        window, len(result.failed), len(result.messages))
        self._aggregate([m for _, m in result.ordered()])
        return result

    def _aggregate(self, messages: list) -> None:
        if messages:
            self.metrics.set_phase("applying")
            started = time.monotonic()
            self.last_aggregate = self.engine.updates.apply(messages)
            self.metrics.outer_seconds.set(time.monotonic() - started)

    def _replay(self, replay: ReplayList, result: GatherResult) -> GatherResult:
        """Apply exactly the messages ``replay`` names, in its order: those already gathered in
        ``result`` when their ids match, the others read again from their senders' buckets (until
        ``timing.gather_timeout_s``). ReplayIncomplete when some stay unreadable."""
        window, wanted = replay.window, dict(replay.messages)
        have = {h: m for h, m in result.messages.items() if h in wanted and message_id(m) == wanted[h]}
        deadline, network = time.monotonic() + self.cfg.timing.gather_timeout_s, self.directory.view()
        while len(have) < len(wanted):
            got = self.read_messages(window, [h for h in wanted if h not in have], network)
            have.update({h: m for h, m in got.messages.items() if message_id(m) == wanted[h]})
            if len(have) == len(wanted) or time.monotonic() >= deadline:
                break
            self.clock.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        lacking = sorted(set(wanted) - set(have))
        if lacking:
            raise ReplayIncomplete(f"window {window}: {len(lacking)} of the {len(wanted)} messages the validator "
                                   f"applied cannot be read here ({', '.join(h[:12] for h in lacking)})")
        self._aggregate([have[h] for h, _ in replay.messages])
        result.messages = {h: have[h] for h, _ in replay.messages}
        if result.failed or result.list_unreadable:
            log.info("window %d: applied the validator's replay list (unreadable at first: %s)", window,
                     ", ".join(k[:12] for k in result.failed) or "the peer list")
        result.replayed = True
        return result

    def _train_and_upload(self, window: int) -> dict:
        boundary, t = self.clock.window_start(window + 1), self.cfg.timing
        if self.behaviour.waits_for_others:  # copiers: look at the others' uploads mid-slot
            self.clock.wait_until(boundary + t.upload_slot_s / 2)
            data, facts = self.make_message(window)
        else:
            data, facts = self.make_message(window)
            # a delay beyond the slot means "just after it closes"
            self.clock.wait_until(boundary + min(self.behaviour.upload_delay_s, t.upload_slot_s + t.slot_grace_s + 1))
        return {"uploaded": self.upload(window, data), **facts}

    def _await_replay(self, window: int) -> ReplayList | None:
        """The validator's replay list for ``window``, waiting up to ``timing.gather_timeout_s`` for it."""
        deadline = time.monotonic() + self.cfg.timing.gather_timeout_s
        while (replay := self.feed.replay(window)) is None and time.monotonic() < deadline:
            self.clock.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return replay

    def finish(self, window: int, result: GatherResult, facts: dict, follows_network: bool = True) -> None:
        """Step 4: publish the fingerprint, save the state, log the window (metrics line + one log line)."""
        fingerprint, published = self._publish_fingerprint(window)
        val = self.engine.measure.mean_loss(self.val_batches)
        self.window_done = window
        self._save(window)
        self.metrics.val_loss.set(val)
        self.metrics.bucket_window_bytes.set(facts.get("bytes_sent", 0) + published)
        self.prune(window)
        facts.update(self._standing(window))
        self.metrics.finished(window)
        self._log_window(window, result, facts, val, fingerprint, follows_network)
        every = self.opts.export_every
        if self.opts.export_hf and (window == self.opts.stop_after_window or (every and (window + 1) % every == 0)):
            self.export(window)

    def _standing(self, window: int) -> dict:
        """Where this peer stands: its final score in the followed validator's record of the previous
        window (the current one may not be out yet), and its incentive and emission at the chain's last
        epoch. Gauges and metrics-line fields; nothing when they cannot be read (never an error)."""
        out: dict = {}
        try:
            record = self.feed.record(window - 1) if window > 0 else None
        except StorageError:
            record = None
        mine = (record or {}).get("peers", {}).get(self.identity.hotkey)
        if isinstance(mine, dict) and isinstance(mine.get("final"), (int, float)):
            out["score"] = float(mine["final"])
            self.metrics.set_standing(own_final_score=out["score"])
        try:
            payout = next((p for p in self.chain.payouts() if p.hotkey == self.identity.hotkey), None)
        except ChainError as exc:
            log.debug("window %d: cannot read the chain's payouts: %s", window, exc)
            payout = None
        if payout is not None:
            out.update(incentive=payout.incentive, emission=payout.emission)
            self.metrics.set_standing(incentive=payout.incentive, emission=payout.emission)
        return out

    def _publish_fingerprint(self, window: int) -> tuple[str, int]:
        """Put the weights' fingerprint and weight sample in this peer's bucket (validators read the
        sample to judge sync); returns the fingerprint and the bytes written."""
        fingerprint = self.engine.measure.fingerprint()
        sample = self.engine.measure.weight_sample(self.cfg.validator.weight_sample, self.cfg.seed)
        data = json.dumps({"window": window, "fingerprint": fingerprint, "sample": sample}).encode()
        try:
            self.store.put(keys.fingerprint(self.run, window, self.identity.hotkey), data)
        except StorageError as exc:
            log.warning("window %d: could not publish the fingerprint: %s", window, exc)
        return fingerprint, len(data)

    def _save(self, window: int) -> None:
        self.metrics.set_phase("saving")
        started = time.monotonic()
        meta = state_meta(LocalState(window, self.training.trainer.step, self.run))
        self.engine.state.save(str(self.opts.run_dir), "state", window, meta, self.opts.durable)
        self.metrics.save_seconds.set(time.monotonic() - started)
        self.metrics.state_bytes.set(state_size(self.opts.run_dir, "state"))

    def _log_window(self, window: int, result: GatherResult, facts: dict, val: float, fingerprint: str,
                    follows_network: bool) -> None:
        """One line in metrics.jsonl with every fact of the window, and one log line that explains it."""
        self._write_line({"window": window, "time": time.time(), "hotkey": self.identity.hotkey,
                          "val_loss": round(val, 5), "fingerprint": fingerprint,
                          "ef_checksum": self.engine.measure.ef_checksum()[:16], "gathered": sorted(result.messages),
                          "missing": result.missing, "outside_slot": sorted(result.outside_slot),
                          "invalid": result.invalid, "failed": result.failed,
                          "replayed": result.replayed, "list": result.list_rule,
                          "list_window": result.list_window, "list_in_time": result.list_in_time,
                          "list_validator": result.list_validator, "list_failover": result.list_failover, **facts})
        what = window_line(result, hotkey=self.identity.hotkey, trained=facts.get("trained", True),
                           uploaded=facts.get("uploaded", False), follows_network=follows_network,
                           slot_opened=self.clock.slot(window)[0] + self.cfg.timing.slot_grace_s)
        log.info("window %d: %s; val loss %.4f, fingerprint %s", window, what, val, fingerprint[:12])

    def _write_line(self, line: dict) -> None:
        self.window_log.write(json.dumps(line) + "\n")
        self.window_log.flush()

    def export(self, window: int) -> None:
        """Write the Hugging Face export (and push it when configured); failures never stop the peer."""
        try:
            out = export_hf(self.engine.state.whole_model(self.data.train_set.vocab_size), self.opts.export_hf, run=self.run,
                            window=window, tokenizer_spec=self.cfg.data.tokenizer)
            log.info("exported the model after window %d to %s", window, out)
            if self.opts.push_to_hub:
                push_to_hub(out, self.opts.push_to_hub)
        except Exception as exc:  # an export is a convenience: log it, keep training
            log.error("export after window %d failed: %s", window, exc)

    # ------------------------------------------------------------------------------- lifecycle

    def _event(self, event: str, **fields) -> dict:
        line = {"event": event, "time": time.time(), "ef_checksum": self.engine.measure.ef_checksum()[:16],
                "fingerprint": self.engine.measure.fingerprint(), **fields}
        self._write_line(line)
        return line

    def start(self) -> None:
        """Publish the bucket card, restore the local state, and — when more than
        ``CATCH_UP_WINDOWS`` windows behind — jump to the validator's newest checkpoint. Closer to the
        chain the peer replays the missed windows instead, which keeps its weights, optimiser and
        error feedback one consistent history."""
        self.directory.publish_card(self.opts.card)
        state = parse_state_meta(self.engine.state.load(str(self.opts.run_dir), "state", self.run),
                                 self.opts.run_dir, self.run)
        if state is not None:
            self.window_done, self.training.trainer.step = state.window, state.inner_step
            self.metrics.finished(state.window)
            line = self._event("resumed", window=state.window)
            log.info("resumed after window %d with error-feedback state %s", state.window, line["ef_checksum"])
        self.prune(self.window_done, everything=True)  # what piled up while this node was away
        self.clock.wait_for_genesis()
        if self.window_done + 1 + self.CATCH_UP_WINDOWS < self.clock.current_window():
            self.load_checkpoint()

    def run_forever(self) -> None:
        """Process windows as the chain advances (until ``stop_after_window``, or a stop request:
        SIGTERM / Ctrl-C end the loop at its next wait). When the chain or a store fails, the step is
        retried; a window is trained at most once, and a window the peer could not train in time is
        applied without training (catch-up), so no failure desyncs it."""
        try:
            self.start()
            self.start_metrics()
            self._loop()
        except StopRequested as stop:
            log.info("stopping (%s); the state of window %d is saved", stop, self.window_done)
        finally:
            self.stop_metrics()
            self.window_log.close()
            self.engine.stop()

    def _loop(self) -> None:
        nxt, trained = self.window_done + 1, None  # trained: (window, facts) once its message is out
        stop, trained_windows, warned = self.opts.stop_after_window, 0, False
        while stop is None or nxt <= stop:
            try:
                current = self.clock.current_window()
                if nxt > current:
                    self.clock.wait_until(self.clock.window_start(nxt))
                    continue
                if nxt == current and (trained is None or trained[0] != nxt):
                    trained = (nxt, self._train_and_upload(nxt))
                self.clock.wait_until(self.clock.slot(nxt)[1])
                did_train = trained is not None and trained[0] == nxt
                apply_s = self._apply_and_finish(nxt, trained[1] if did_train else None)
                trained_windows += did_train
                if did_train and trained_windows >= 2 and not warned:  # the first pays one-time costs
                    warned = self._check_fit(nxt, trained[1]["train_s"], apply_s)
                nxt += 1
            except ReplayIncomplete as exc:  # a newer checkpoint ends the wait; else the window is tried again
                if self.load_checkpoint():
                    nxt, trained = self.window_done + 1, None
                    continue
                log.warning("%s; retrying in %.0f s", exc, self.RETRY_S)
                self.clock.sleep(self.RETRY_S)
            except (ChainError, StorageError) as exc:
                log.warning("window %d: %s; retrying in %.0f s", nxt, exc, self.RETRY_S)
                self.clock.sleep(self.RETRY_S)

    def _apply_and_finish(self, window: int, trained: dict | None) -> float:
        """Steps 3 and 4 of ``window`` (``trained``: the facts of its training, None when it was not
        trained here); returns the seconds they took."""
        started, follows = time.monotonic(), self.in_sync
        result = self.apply(window, prefer_published=trained is None)
        facts = {"trained": True, **trained} if trained is not None else {"trained": False}
        facts["apply_s"] = round(time.monotonic() - started, 3)  # gather, aggregate, outer step
        self.finish(window, result, facts, follows_network=follows)
        return time.monotonic() - started

    def _check_fit(self, window: int, train_s: float, apply_s: float) -> bool:
        """From the second trained window on (the first pays one-time costs: allocations, caches):
        can training and applying a window fit between the close of the previous window's upload slot
        and the next boundary? If not, say so — once — with the window length that would (the peer
        still works: it applies the windows it cannot train). Returns whether it warned."""
        t = self.cfg.timing
        window_s = self.clock.window_start(window + 1) - self.clock.window_start(window)
        need = t.upload_slot_s + t.slot_grace_s + apply_s + train_s
        if not math.isfinite(window_s) or window_s <= 0 or need <= 0.8 * window_s:
            return False
        block_s = window_s / t.blocks_per_window
        blocks = math.ceil(need / 0.8 / block_s)
        log.warning("this peer cannot keep up with the windows: %d inner steps took %.1f s and applying a window %.1f s; "
                    "with the upload slot and its grace (%.1f s) that needs about %.1f s, but a window lasts %.1f s. "
                    "It will apply the windows it cannot train without training them. Windows that fit this "
                    "machine need timing.blocks_per_window >= %d (%.0f s at %.2f s per block), or a faster device, "
                    "fewer inner steps or smaller batches.", self.cfg.inner.steps, train_s, apply_s,
                    t.upload_slot_s + t.slot_grace_s, need, window_s, blocks, blocks * block_s, block_s)
        self._event("window_too_short", window=window, train_s=round(train_s, 3), apply_s=round(apply_s, 3),
                    window_s=round(window_s, 3), blocks_per_window_needed=blocks)
        return True
