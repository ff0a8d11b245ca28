"""The embedded chain: one SQLite file that any number of processes share.

Blocks advance with wall-clock time (``clock=wall``: ``block = (now − genesis) / block_time``; a
creator may set genesis in the future, and the chain stays at block 0 until then) or only when told
to (``clock=manual``: :meth:`LocalChain.advance`, for deterministic simulations). A creator may also
leave genesis *pending* (``genesis=math.inf``): nodes can register and commit but no time passes
until someone calls :meth:`LocalChain.start` — e.g. once every node of a local network is up, so
that none misses the first windows however long it took to boot.
The clock settings are fixed by whoever creates the file; later openers read them from it. The file
runs in WAL mode, every write is one ``BEGIN IMMEDIATE`` transaction, and every read one snapshot,
so readers never see half a write. Registration (hotkeys, stakes, validator permits) is explicit:
:meth:`LocalChain.register`; so is the subnet owner's hotkey (:meth:`LocalChain.set_owner`).

The chain pays as Bittensor does: every ``tempo`` blocks it runs one epoch of Yuma Consensus
(:mod:`gauntlet.chain.yuma`) over the weights visible at that block, emits ``tempo ×
emission_per_block`` (18 % to the subnet owner, the rest to miners and validators) and keeps every
uid's incentive, dividends, emission and balance (:meth:`LocalChain.payouts`). Epochs run lazily —
whoever next writes or reads payouts runs the ones that are due, from the recorded history, so every
process sees the same result. With ``commit_reveal`` on, weights set in epoch interval ``k`` become
visible (to :meth:`weights` and to the epochs) ``reveal_period`` intervals later, as on the chain.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

from gauntlet.chain import yuma
from gauntlet.chain.base import MAX_COMMITMENT_BYTES, Commitment, HotkeySigner, Neuron, Payout, checked_weights, normalise
from gauntlet.errors import ChainError

RAO = 10**9  # the smallest unit of a token

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS neurons (
    uid INTEGER PRIMARY KEY, hotkey TEXT UNIQUE NOT NULL, stake REAL NOT NULL,
    validator_permit INTEGER NOT NULL, registered_block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS commitments (hotkey TEXT PRIMARY KEY, data BLOB NOT NULL, block INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS weights (
    id INTEGER PRIMARY KEY AUTOINCREMENT, validator_uid INTEGER NOT NULL, block INTEGER NOT NULL,
    visible_from INTEGER NOT NULL, weights TEXT NOT NULL, stored TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS weights_by_validator ON weights (validator_uid, id);
CREATE TABLE IF NOT EXISTS block_times (block INTEGER PRIMARY KEY, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (block INTEGER PRIMARY KEY, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS yuma_state (uid INTEGER PRIMARY KEY, bonds TEXT NOT NULL, earned INTEGER NOT NULL);
"""


class LocalChain:
    def __init__(self, path: str | Path, *, block_time: float = 12.0, clock: str = "wall", netuid: int = 1,
                 timeout: float = 30.0, now: Callable[[], float] = time.time, genesis: float | None = None,
                 tempo: int = 360, emission_per_block: int = RAO, commit_reveal: bool = False,
                 reveal_period: int = 1) -> None:
        if clock not in ("wall", "manual"):
            raise ChainError(f"local chain clock must be 'wall' or 'manual', not {clock!r}")
        if block_time <= 0:
            raise ChainError("local chain block_time must be positive")
        if tempo < 1 or reveal_period < 1 or emission_per_block < 0:
            raise ChainError(f"local chain: tempo ({tempo}) and reveal_period ({reveal_period}) must be at least 1 "
                             f"block / epoch, emission_per_block ({emission_per_block}) not negative")
        if clock == "manual" and genesis is not None and math.isinf(genesis):
            raise ChainError("a manual clock has no pending genesis: it starts when advance() is first called")
        self.path = Path(path).resolve()
        self.netuid = netuid
        self._now = now  # a manual clock records block times with this (a virtual clock in lockstep runs)
        self.url = f"local://{self.path}"
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._enable_wal(timeout)
            with self._write() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                start = now() if genesis is None else genesis
                defaults = {"genesis": repr(start), "block_time": repr(block_time), "clock": clock, "block": "0",
                            "tempo": str(int(tempo)), "emission_per_block": str(int(emission_per_block)),
                            "commit_reveal": str(int(bool(commit_reveal))), "reveal_period": str(int(reveal_period)),
                            "last_epoch": "0", "owner_earned": "0"}
                for key, value in defaults.items():
                    db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
                db.execute("INSERT OR IGNORE INTO block_times VALUES (0, ?)", (float(defaults["genesis"]),))
        except sqlite3.Error as exc:
            raise ChainError(f"cannot open local chain {self.path}: {exc}") from exc
        meta = dict(self._read("SELECT key, value FROM meta"))
        self._genesis, self.block_time, self.clock = float(meta["genesis"]), float(meta["block_time"]), meta["clock"]
        self.tempo, self.emission_per_block = int(meta["tempo"]), int(meta["emission_per_block"])
        self.commit_reveal, self.reveal_period = meta["commit_reveal"] == "1", int(meta["reveal_period"])
        self.yuma = yuma.YumaParams(tempo=self.tempo)

    def _enable_wal(self, timeout: float) -> None:
        """Switch to WAL. Two processes creating the file at once can see "database is locked" here
        (SQLite does not apply the busy timeout to this switch): retry until ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # ------------------------------------------------------------------------------ transactions

    @contextmanager
    def _write(self):
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise ChainError(f"local chain {self.path}: {exc}") from exc

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise ChainError(f"local chain {self.path}: {exc}") from exc

    # ----------------------------------------------------------------------------------- clock

    @property
    def genesis(self) -> float:
        """Unix time of block 0; ``inf`` while pending (read again until someone starts the chain)."""
        if math.isinf(self._genesis):
            self._genesis = float(self._read("SELECT value FROM meta WHERE key = 'genesis'")[0][0])
        return self._genesis

    @property
    def started(self) -> bool:
        return not math.isinf(self.genesis)

    def start(self, at: float | None = None) -> float:
        """Start a chain created with a pending genesis: block 0 at ``at`` (default: now). Returns
        the genesis; a chain that has already started keeps its own."""
        at = time.time() if at is None else float(at)
        if math.isinf(at) or math.isnan(at):
            raise ChainError("a chain must start at a finite time")
        with self._write() as db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'genesis' AND value = 'inf'", (repr(at),))
            db.execute("UPDATE block_times SET time = ? WHERE block = 0 AND time = ?", (at, math.inf))
        self._genesis = math.inf
        return self.genesis

    def block(self) -> int:
        if self.clock == "manual":
            return int(self._read("SELECT value FROM meta WHERE key = 'block'")[0][0])
        genesis = self.genesis
        if math.isinf(genesis):
            return 0  # not started
        return max(0, int((time.time() - genesis) / self.block_time))  # block 0 until genesis

    def advance(self, blocks: int = 1) -> int:
        """Move a manual clock forward; returns the new block."""
        if self.clock != "manual":
            raise ChainError("advance() needs a chain created with clock=manual")
        if blocks < 0:
            raise ChainError("the chain cannot go back in time")
        with self._write() as db:
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'block'", (blocks,))
            block = int(db.execute("SELECT value FROM meta WHERE key = 'block'").fetchone()[0])
            db.execute("INSERT OR REPLACE INTO block_times VALUES (?, ?)", (block, self._now()))
            self._settle(db, block)
            return block

    def timestamp(self, block: int) -> float:
        """Wall clock: ``genesis + block · block_time``. Manual clock: when ``advance`` reached the
        block (the latest block at or before it); a future block is expected ``block_time`` apart."""
        if self.clock == "wall":
            return self.genesis + block * self.block_time
        row = self._read("SELECT block, time FROM block_times WHERE block <= ? ORDER BY block DESC LIMIT 1", (block,))
        reached, at = row[0]
        return float(at) + (block - int(reached)) * self.block_time if block > self.block() else float(at)

    # -------------------------------------------------------------------------------- registry

    def register(self, hotkey: str, *, stake: float = 0.0, validator_permit: bool = False) -> int:
        """Register a hotkey (idempotent: an existing hotkey keeps its uid, stake and permit are
        updated). Returns its uid."""
        block = self.block()
        with self._write() as db:
            self._settle(db, block)  # the epochs due so far ran with the registry as it was
            row = db.execute("SELECT uid FROM neurons WHERE hotkey = ?", (hotkey,)).fetchone()
            if row is not None:
                db.execute("UPDATE neurons SET stake = ?, validator_permit = ? WHERE uid = ?",
                           (stake, int(validator_permit), row[0]))
                return int(row[0])
            uid = db.execute("SELECT COALESCE(MAX(uid) + 1, 0) FROM neurons").fetchone()[0]
            db.execute("INSERT INTO neurons VALUES (?, ?, ?, ?, ?)", (uid, hotkey, stake, int(validator_permit), block))
            return int(uid)

    def metagraph(self) -> list[Neuron]:
        rows = self._read("SELECT uid, hotkey, stake, validator_permit FROM neurons ORDER BY uid")
        return [Neuron(int(u), h, float(s), bool(p)) for u, h, s, p in rows]

    def _uid(self, db: sqlite3.Connection, hotkey: str) -> tuple[int, bool]:
        row = db.execute("SELECT uid, validator_permit FROM neurons WHERE hotkey = ?", (hotkey,)).fetchone()
        if row is None:
            raise ChainError(f"hotkey {hotkey} is not registered on local chain {self.path}")
        return int(row[0]), bool(row[1])

    # ----------------------------------------------------------------------------- commitments

    def commit(self, signer: HotkeySigner, data: bytes) -> None:
        if len(data) > MAX_COMMITMENT_BYTES:
            raise ChainError(f"commitment is {len(data)} bytes; at most {MAX_COMMITMENT_BYTES} fit")
        block = self.block()
        with self._write() as db:
            self._uid(db, signer.hotkey)
            db.execute("INSERT OR REPLACE INTO commitments VALUES (?, ?, ?)", (signer.hotkey, bytes(data), block))

    def commitments(self) -> dict[str, Commitment]:
        rows = self._read("SELECT hotkey, data, block FROM commitments ORDER BY hotkey")
        return {h: Commitment(h, bytes(d), int(b)) for h, d, b in rows}

    def set_owner(self, hotkey: str) -> None:
        """Make a registered hotkey the subnet owner's (who publishes the run manifest)."""
        with self._write() as db:
            self._uid(db, hotkey)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('owner', ?)", (hotkey,))

    def owner_hotkey(self) -> str:
        row = self._read("SELECT value FROM meta WHERE key = 'owner'")
        if not row:
            raise ChainError(f"local chain {self.path} has no subnet owner: `gauntlet run publish --register` "
                             f"makes the publishing hotkey the owner")
        return str(row[0][0])

    # --------------------------------------------------------------------------------- weights

    def set_weights(self, signer: HotkeySigner, weights: Mapping[int, float]) -> None:
        """Set the signer's weights. Stored as the chain stores them (quantised to u16, each row
        max-upscaled); visible from this block, or ``reveal_period`` epochs later with commit-reveal."""
        weights = checked_weights(weights)
        sent, row = yuma.quantize_weights(weights), normalise(weights)
        if not row or not sent:
            raise ChainError("all weights are zero; nothing to set")
        block = self.block()
        # commit-reveal: revealed just after the epoch that closes the interval ``reveal_period`` later
        visible_from = (block // self.tempo + self.reveal_period) * self.tempo + 1 if self.commit_reveal else block
        with self._write() as db:
            self._settle(db, block)
            uid, permit = self._uid(db, signer.hotkey)
            if not permit:
                raise ChainError(f"hotkey {signer.hotkey} (uid {uid}) has no validator permit")
            known = {r[0] for r in db.execute("SELECT uid FROM neurons")}
            if set(sent) - known:
                raise ChainError(f"weights name uid(s) {sorted(set(sent) - known)}, not registered on this subnet")
            db.execute("INSERT INTO weights (validator_uid, block, visible_from, weights, stored) VALUES (?, ?, ?, ?, ?)",
                       (uid, block, visible_from, json.dumps(row), json.dumps(yuma.stored_weights(sent))))

    def weights(self) -> dict[int, dict[int, float]]:
        """The latest visible weights of each validator (with commit-reveal, the latest revealed)."""
        rows = self._read("SELECT validator_uid, weights FROM weights WHERE id IN (SELECT MAX(id) FROM weights "
                          "WHERE visible_from <= ? GROUP BY validator_uid) ORDER BY validator_uid", (self.block(),))
        return {int(v): {int(u): w for u, w in json.loads(text).items()} for v, text in rows}

    def weights_history(self, validator_uid: int) -> list[tuple[int, dict[int, float]]]:
        """Every (block, weights) a validator set, oldest first."""
        rows = self._read("SELECT block, weights FROM weights WHERE validator_uid = ? ORDER BY id", (validator_uid,))
        return [(int(b), {int(u): w for u, w in json.loads(t).items()}) for b, t in rows]

    # --------------------------------------------------------------------------------- payouts

    def payouts(self) -> list[Payout]:
        """Every uid's share of the last epoch (incentive, dividends), what it was paid then and
        everything it was paid so far (running the epochs that are due)."""
        block = self.block()
        with self._write() as db:
            self._settle(db, block)
            last = db.execute("SELECT result FROM epochs ORDER BY block DESC LIMIT 1").fetchone()
            earned = dict(db.execute("SELECT uid, earned FROM yuma_state"))
            neurons = db.execute("SELECT uid, hotkey FROM neurons ORDER BY uid").fetchall()
        result = json.loads(last[0]) if last else {}

        def at(key: str, uid: int) -> int:
            values = result.get(key, [])
            return values[uid] if uid < len(values) else 0
        return [Payout(uid, hotkey, at("incentive", uid) / yuma.U16_MAX, at("dividends", uid) / yuma.U16_MAX,
                       at("paid", uid), int(earned.get(uid, 0))) for uid, hotkey in neurons]

    def epochs(self) -> list[dict]:
        """Every epoch run so far, oldest first: its block and, per uid, incentive, dividends,
        validator trust, consensus (u16) and what it paid; the owner's cut."""
        block = self.block()
        with self._write() as db:
            self._settle(db, block)
        return [{"block": int(b), **json.loads(r)} for b, r in self._read("SELECT block, result FROM epochs ORDER BY block")]

    def owner_earned(self) -> int:
        """What the subnet owner's 18 % has come to."""
        return int(self._read("SELECT value FROM meta WHERE key = 'owner_earned'")[0][0])

    def _settle(self, db: sqlite3.Connection, block: int) -> None:
        """Run every epoch due up to ``block`` (inside the caller's write transaction)."""
        last = int(db.execute("SELECT value FROM meta WHERE key = 'last_epoch'").fetchone()[0])
        for at in range(last + self.tempo, block + 1, self.tempo):
            self._run_epoch(db, at)
            db.execute("UPDATE meta SET value = ? WHERE key = 'last_epoch'", (str(at),))

    def _run_epoch(self, db: sqlite3.Connection, block: int) -> None:
        neurons = db.execute("SELECT uid, stake, validator_permit, registered_block FROM neurons ORDER BY uid").fetchall()
        if not neurons:
            return
        n = len(neurons)
        state = {u: (json.loads(b), e) for u, b, e in db.execute("SELECT uid, bonds, earned FROM yuma_state")}
        weights, last_update = [{} for _ in range(n)], [0] * n
        for uid, visible_from, stored in db.execute(
                "SELECT validator_uid, visible_from, stored FROM weights WHERE id IN (SELECT MAX(id) FROM weights "
                "WHERE visible_from <= ? GROUP BY validator_uid)", (block,)):
            if uid < n:
                weights[uid] = {int(j): v for j, v in json.loads(stored).items() if int(j) < n}
                last_update[uid] = int(visible_from)
        bonds = [{int(j): v for j, v in state.get(u, ({}, 0))[0].items() if int(j) < n} for u in range(n)]
        total = self.tempo * self.emission_per_block
        owner = yuma.owner_share(total)
        result = yuma.epoch([round(s * RAO) for _, s, _, _ in neurons], weights, bonds, last_update,
                            [r for *_, r in neurons], block, self.yuma,
                            validator_permit=[bool(p) for _, _, p, _ in neurons], emission=total - owner)
        paid = [s + v for s, v in zip(result.server_emission, result.validator_emission)]
        for uid in range(n):
            earned = state.get(uid, ({}, 0))[1] + paid[uid]
            db.execute("INSERT OR REPLACE INTO yuma_state VALUES (?, ?, ?)",
                       (uid, json.dumps(result.bonds[uid]), earned))
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'owner_earned'", (owner,))
        db.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?)", (block, json.dumps({
            "incentive": result.incentive, "dividends": result.dividends, "validator_trust": result.validator_trust,
            "consensus": result.consensus, "paid": paid, "owner": owner})))

    def close(self) -> None:
        with self._lock:
            self._db.close()
