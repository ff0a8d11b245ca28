"""What a peer says about each window in its log: how many updates it aggregated and, when the answer
is none, why — so that an operator reading "nothing aggregated" knows whether their node, the other
peers or the validator is the cause. Pure functions of the window's facts."""

from __future__ import annotations

import math

from peers.network.gather import GatherResult


def window_line(result: GatherResult, *, hotkey: str, trained: bool, uploaded: bool, follows_network: bool,
                slot_opened: float | None = None) -> str:
    """One clause: ``"3 peers aggregated"`` or ``"nothing aggregated: <reasons>"`` (+ how this peer
    took part: caught up without training, its own upload late, ...)."""
    own = _own_part(result, hotkey, trained, uploaded, slot_opened)
    if not follows_network:
        return "nothing aggregated: this behaviour does not follow the network"
    if result.replayed and (result.failed or result.list_unreadable):
        n = len(result.failed)
        cause = f"{n} message{'s' if n != 1 else ''} unreadable at first" if n else "the peer list unreadable here"
        return (f"applied the {len(result.messages)} messages of the validator's replay list ({cause})"
                + (f"; {own}" if own else ""))
    count = len(result.messages)
    if count:
        head = f"{count} peer{'s' if count != 1 else ''} aggregated"
        return head + (f" ({own})" if own else "")
    reasons = [own] if own else []
    reasons.append(_others_part(result, hotkey))
    return "nothing aggregated: " + "; ".join(r for r in reasons if r)


def _own_part(result: GatherResult, hotkey: str, trained: bool, uploaded: bool, slot_opened: float | None) -> str:
    if not trained:
        return "caught up: applied without training, this peer was down or behind while the window ran"
    if not uploaded:
        return "this peer uploaded nothing (no update, or the upload failed)"
    if hotkey in result.outside_slot:
        at = result.outside_slot[hotkey]
        when = f" ({at - slot_opened:+.1f} s from its opening)" if slot_opened is not None and math.isfinite(at) else ""
        return f"this peer missed its own upload slot{when}"
    if hotkey in result.invalid:
        return f"this peer's own message was refused: {result.invalid[hotkey]}"
    if hotkey in result.failed:
        return f"this peer's own message could not be read back: {result.failed[hotkey]}"
    return ""


def _others_part(result: GatherResult, hotkey: str) -> str:
    if result.list_unreadable:
        return f"the validator's peer list could not be read ({result.list_unreadable})"
    if result.list_rule == "none":
        return "the validator has published no peer list in time for too long (nobody's message is applied)"
    if result.listed == 0:
        which = f" of window {result.list_window}" if result.list_rule == "fallback" else ""
        return f"the validator's list{which} names nobody (no peer has shown yet that its updates help)"
    others = {
        "uploaded nothing": [h for h in result.missing if h != hotkey],
        "uploaded outside the slot": [h for h in result.outside_slot if h != hotkey],
        "sent invalid messages": [h for h in result.invalid if h != hotkey],
        "could not be read": [h for h in result.failed if h != hotkey],
    }
    parts = [f"{len(v)} {'peer' if len(v) == 1 else 'peers'} {what}" for what, v in others.items() if v]
    if not parts:
        return "no other peer has a bucket card on chain" if result.listed is None else \
            f"none of the {result.listed} listed peers had a valid message in the slot"
    prefix = "" if result.listed is None else f"of the {result.listed} peers the validator listed, "
    return prefix + ", ".join(parts)
