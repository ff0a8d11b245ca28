"""``gauntlet doctor``: check a node's set-up before (and while) it runs.

Each check returns a :class:`Check` — passed or not, a one-line reason and, when it fails, the fix.
A check that cannot run (no network, a timeout, an unexpected error) fails with its cause; it never
raises. The checks take what the node itself would use: the config, the hotkey, the chain, the write
store and the bucket card the node publishes (with the read-only key others get).
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from gauntlet.errors import AccessDenied, GauntletError, InvalidCommitment, StorageError
from gauntlet.storage import BucketCard, check_card_endpoint

PROBE_PREFIX = "doctor/"
CHECK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    reason: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Setup:
    """What the checks look at (built from the node's own flags)."""

    role: str  # "peer" or "validator"
    cfg: object  # GauntletConfig
    hotkey: str
    chain: object  # Chain
    store: object  # the write store
    card: object  # the BucketCard the node publishes
    read_store: Callable[[], object] | None  # the store as others open it from the card (read-only key)
    run_dir: Path
    data_dir: Path
    free_bytes: int | None = None  # pretend the disk has this much free (tests, planning)
    retain: int = 0  # windows of published objects kept (--retain; 0: all)
    allow_local_cards: bool = False  # a local test network: file://, http:// and private cards are fine


TIMEOUT_FIXES = {  # what to do about a check that did not answer in time
    "data": "tokenise the corpus once before the node starts: gauntlet data prepare SOURCE --out DIR, then "
            "--set data.source=DIR",
    "device": "check the GPU and its driver (nvidia-smi)",
    "disk": "check the run directory's file system",
}


def guarded(name: str, fn: Callable[[], Check], timeout: float = CHECK_TIMEOUT_S) -> Check:
    """Run one check, for at most ``timeout`` seconds; a failure to run it is a failed check with its
    cause. The check runs in a daemon thread: one that does not answer in time is abandoned, and
    cannot keep the doctor's process alive once it has reported (a service manager's start timeout
    counts that time)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # reported below, as the check's failure
            outcome.append(exc)

    worker = threading.Thread(target=run, name=f"doctor-{name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return Check(name, False, f"no answer within {timeout:.0f} s",
                     TIMEOUT_FIXES.get(name, "check the network path to this service"))
    result = outcome[0]
    if isinstance(result, Check):
        return result
    if isinstance(result, GauntletError):
        return Check(name, False, f"could not run: {result}", "see the reason")
    # a check must never end the doctor with a traceback
    return Check(name, False, f"could not run: {type(result).__name__}: {result}", "see the reason")


# ------------------------------------------------------------------------------------- storage


def check_write_key(s: Setup) -> Check:
    key, body = f"{PROBE_PREFIX}write-{uuid.uuid4().hex}", os.urandom(64)
    try:
        s.store.put(key, body)
        back = s.store.get(key, max_bytes=1024)
        s.store.delete(key)
    except AccessDenied as exc:
        return Check("write key", False, f"the write key may not put/read/delete in the bucket: {exc}",
                     "use a key with read and write access to this bucket (--storage.access-key/--storage.secret-key)")
    except StorageError as exc:
        return Check("write key", False, f"the bucket cannot be used: {exc}",
                     "check the bucket name, endpoint_url and region in --storage")
    if back != body:
        return Check("write key", False, "a probe object read back different bytes", "check the storage service")
    return Check("write key", True, "put, read back and deleted a probe object")


def check_read_key(s: Setup) -> Check:
    """The key published on chain must read, and must NOT write or delete (anyone can see it)."""
    if s.card is None or s.card.scheme == "file":
        return Check("read key", True, "file:// bucket: nothing is published")
    key, body = f"{PROBE_PREFIX}read-{uuid.uuid4().hex}", os.urandom(64)
    s.store.put(key, body)
    try:
        reader = s.read_store()
        try:
            if reader.get(key, max_bytes=1024) != body:
                return Check("read key", False, "the read key read other bytes", "check the storage service")
        except (AccessDenied, StorageError) as exc:
            return Check("read key", False, f"the published read key cannot read the bucket: {exc}",
                         "give the read-only key read access to this bucket")
        wrote = _allowed(lambda: reader.put(f"{key}-by-reader", b"x"))
        deleted = _allowed(lambda: reader.delete(key))
        if wrote or deleted:
            if wrote:
                _allowed(lambda: s.store.delete(f"{key}-by-reader"))
            what = " and ".join(w for w, did in (("write", wrote), ("delete", deleted)) if did)
            return Check("read key", False, f"the key published on chain can {what}: anyone could overwrite or "
                         "remove this node's messages",
                         "create a key with read-only access (s3:GetObject, s3:ListBucket) and pass it as "
                         "--storage.read-access-key/--storage.read-secret-key")
        return Check("read key", True, "reads the bucket; put and delete are refused")
    finally:
        _allowed(lambda: s.store.delete(key))


def _allowed(op: Callable[[], object]) -> bool:
    try:
        op()
        return True
    except (AccessDenied, StorageError):
        return False


# --------------------------------------------------------------------------------------- chain


def check_registered(s: Setup) -> Check:
    neurons = {n.hotkey: n for n in s.chain.metagraph()}
    n = neurons.get(s.hotkey)
    if n is None:
        return Check("hotkey", False, f"{s.hotkey} is not registered on subnet {s.chain.netuid}",
                     f"register it: btcli subnet register --netuid {s.chain.netuid} (or --register on local chains)")
    if s.role == "validator" and not n.validator_permit:
        return Check("hotkey", False, f"uid {n.uid} has no validator permit (stake {n.stake:,.0f})",
                     "stake more to the hotkey until it holds a validator permit")
    return Check("hotkey", True, f"registered as uid {n.uid}" + (", validator permit" if s.role == "validator" else ""))


def check_card(s: Setup) -> Check:
    """The card this node publishes: one other nodes accept (https on a public address), and the one
    the chain holds if it holds one."""
    if s.card is None:
        return Check("bucket card", True, "no card to publish")
    try:
        check_card_endpoint(s.card, s.allow_local_cards)
    except InvalidCommitment as exc:
        return Check("bucket card", False, f"other nodes will refuse this card: {exc}",
                     "serve the bucket over https:// from a public address (Cloudflare R2, AWS S3, ...); only a "
                     "local test network, where every node passes --allow-local-cards, may use file://, http:// or "
                     "private addresses")
    mine = s.chain.commitments().get(s.hotkey)
    if mine is None:
        return Check("bucket card", True, "none on chain yet: the node commits it when it starts")
    try:
        card = BucketCard.decode(mine.data)
    except (ValueError, GauntletError) as exc:
        return Check("bucket card", False, f"the commitment on chain is not a bucket card: {exc}",
                     "start the node once: it commits its card")
    fields = ("scheme", "location", "bucket", "region", "access_key")
    diff = [f for f in fields if getattr(card, f) != getattr(s.card, f)]
    if diff:
        shown = ", ".join(f"{f} {getattr(card, f)!r} on chain vs {getattr(s.card, f)!r} here" for f in diff)
        return Check("bucket card", False, f"the card on chain differs: {shown}",
                     "fix --storage / the read key, or start the node: it commits the card it uses")
    return Check("bucket card", True, f"matches the bucket ({card.bucket or card.location})")


def check_clock(s: Setup) -> Check:
    block = s.chain.block()
    block_time = s.chain.timestamp(block + 1) - s.chain.timestamp(block)
    skew = time.time() - s.chain.timestamp(block)
    if not math.isfinite(skew) or block_time <= 0:
        return Check("clock", True, f"block {block}: the chain has not started yet")
    if skew < -block_time or skew > 2 * block_time:  # the current block began at most one block ago
        return Check("clock", False, f"this machine's clock is {skew:+.0f} s off block {block}'s time "
                     f"(a block is {block_time:.0f} s)", "synchronise the clock (chrony / systemd-timesyncd)")
    return Check("clock", True, f"within a block of the chain (block {block}, {skew:+.1f} s)")


# ------------------------------------------------------------------------------------ machine


def state_bytes(params: int, role: str) -> int:
    """Bytes of one saved node state: fp32 weights, plus AdamW's two moments and the error feedback
    for a peer (16 B/parameter), or weights and the book for a validator (4 B/parameter)."""
    return params * (16 if role == "peer" else 4)


def window_bytes(params: int, role: str) -> int:
    """Bytes a node publishes per window: a peer's message (≈ 0.0276 B/parameter), a validator's
    fp32 aggregate (4 B/parameter)."""
    return int(params * (0.0276 if role == "peer" else 4))


def check_disk(s: Setup, params: int) -> Check:
    one = state_bytes(params, s.role)
    need = 2 * one  # the state and the one being written beside it
    per_window = window_bytes(params, s.role)
    local_bucket = getattr(s.card, "scheme", None) == "file"
    kept = s.retain or 100  # --retain 0 keeps everything: plan for 100 windows
    if local_bucket:  # the bucket is on this machine: the retained windows (and checkpoints) live here too
        need += kept * per_window + (kept * params * 4 // max(1, s.cfg.validator.checkpoint_every)
                                     if s.role == "validator" else 0)
    if s.role == "validator":
        need += int(params * 0.0276 * 256)  # a window's spooled messages (256 peers)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    free = s.free_bytes if s.free_bytes is not None else shutil.disk_usage(s.run_dir).free
    text = (f"{_gb(free)} free in {s.run_dir}; this {s.role} needs {_gb(need)} ({_gb(one)} a state, "
            f"{_gb(per_window)} published a window, "
            f"{f'{s.retain} windows kept' if s.retain else 'every window kept (--retain 0; 100 planned)'}"
            f"{' on this disk' if local_bucket else ' in the bucket'})")
    if free < need:
        return Check("disk", False, text, "free space, point --run-dir at a larger disk, or lower --retain")
    return Check("disk", True, text)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def check_device(s: Setup) -> Check:
    import torch  # deferred: torch loads only when the device is checked (`gauntlet doctor --help` stays instant)

    from gauntlet.models import pick_device

    device = pick_device(s.cfg.model.device)
    x = torch.randn(64, 64, device=device)
    y = x @ x
    if device.type == "cuda" and s.cfg.model.autocast_bf16:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = x @ x
    if not bool(torch.isfinite(y).all()):
        return Check("device", False, f"{device}: a matmul gave non-finite values", "check the GPU and its driver")
    return Check("device", True, f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                                                else "") + ", matmul ok")


def check_data(s: Setup) -> Check:
    from gauntlet.data import open_dataset  # deferred: loads torch, as above

    train, val = open_dataset(s.cfg.data, s.data_dir)
    return Check("data", True, f"{s.cfg.data.source}: {len(train):,} training and {len(val):,} validation sequences "
                 f"of {s.cfg.data.seq_len} tokens, vocabulary {train.vocab_size:,}")


def run_checks(s: Setup, params: Callable[[], int]) -> list[Check]:
    """Every check, in the order an operator fixes things."""
    checks = [("write key", lambda: check_write_key(s)), ("read key", lambda: check_read_key(s)),
              ("hotkey", lambda: check_registered(s)), ("bucket card", lambda: check_card(s)),
              ("clock", lambda: check_clock(s)), ("device", lambda: check_device(s)),
              ("data", lambda: check_data(s)), ("disk", lambda: check_disk(s, params()))]
    return [guarded(name, fn) for name, fn in checks]
