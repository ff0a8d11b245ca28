"""What a node keeps in its own bucket: with ``--retain K``, the last K windows of what it publishes.

Every window a peer writes its message and fingerprint, and a validator its replay list (which
messages made the window's aggregate), the next peer list and (every ``checkpoint_every`` windows) a
checkpoint. Left alone (``--retain 0``, the default, which a network without validators needs for late
joiners) they fill the bucket: a ``1B`` peer's messages are about 20 MB a window. With ``--retain K`` a
node keeps the last K windows of them — enough for a peer that was away to load the validator's
latest checkpoint and replay every window since from the listed messages — and its last
``CHECKPOINTS_KEPT`` checkpoints (the newest, and the one before while a late peer may still be
reading it); the signed window
records (a few kB each, the audit trail) and peer lists (about 1.5 kB each; a node whose window's
list is late looks back for the most recent one in time, and all must find the same) are never
deleted. Deletions go in batches (S3's ``DeleteObjects``, 1,000 keys a request) and each removes one
whole object, so a crash mid-way leaves nothing half-pruned; what is left is pruned at the next
window or start.
"""

from __future__ import annotations

import logging

from gauntlet.errors import ConfigError, StorageError
from gauntlet.storage import ObjectStore, keys

log = logging.getLogger("gauntlet.retention")
PRUNED_KINDS = ("message", "fingerprint", "replay")
MIN_RETAIN = 3  # windows kept beyond a checkpoint interval: the window being replayed and two more
CHECKPOINTS_KEPT = 2


def check_retain(retain: int, role: str = "peer", checkpoint_every: int = 25) -> int:
    """0 keeps everything (a network without validators needs the whole history for late joiners).
    Peers and validators keep at least ``checkpoint_every + 3`` windows: a late peer loads the latest
    checkpoint, then replays every window since from the validator's replay lists and the listed peers'
    messages."""
    least = checkpoint_every + MIN_RETAIN
    if retain != 0 and retain < least:
        raise ConfigError(f"--retain {retain}: a {role} keeps at least {least} windows (or 0: everything), so that "
                          f"peers that fell behind can load the latest checkpoint and replay the windows since "
                          f"from " + ("its messages" if role == "peer" else "its replay lists")
                          + f" (validator.checkpoint_every={checkpoint_every})")
    return retain


def expired(parsed: list[tuple[str, keys.ParsedKey]], run: str, hotkey: str, newest: int, retain: int) -> list[str]:
    """Keys (with their parsed form) that fall out of the last ``retain`` windows ending at ``newest``,
    and the checkpoints beyond the newest ``CHECKPOINTS_KEPT``. Only this node's own objects of this run."""
    out = [k for k, p in parsed if p.run == run and p.kind in PRUNED_KINDS and p.window <= newest - retain
           and (p.hotkey is None or p.hotkey == hotkey)]
    checkpoints = sorted((p.window, k) for k, p in parsed if p.run == run and p.kind == "checkpoint")
    return out + [k for _, k in checkpoints[:-CHECKPOINTS_KEPT]] if len(checkpoints) > CHECKPOINTS_KEPT else out


def prune(store: ObjectStore, run: str, hotkey: str, newest: int, retain: int, everything: bool = False) -> int:
    """Delete what :func:`expired` names: the window ``newest − retain`` and the checkpoints (or,
    with ``everything``, every older window: after a restart). Returns how many objects went;
    a storage error is logged, never raised (the next window tries again)."""
    try:
        if everything:
            infos = store.list(keys.run_prefix(run))
        else:
            infos = store.list(keys.window_prefix(run, newest - retain)) if newest - retain >= 0 else []
            infos += store.list(keys.run_prefix(run) + "checkpoints/")
        parsed = [(i.key, p) for i in infos if (p := keys.parse(i.key)) is not None]
        gone = expired(parsed, run, hotkey, newest, retain)
        store.delete_many(gone)  # S3: one request per 1,000 keys
        return len(gone)
    except StorageError as exc:
        log.warning("pruning windows up to %d failed (retried next window): %s", newest - retain, exc)
        return 0
