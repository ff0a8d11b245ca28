"""The validator's replay list: signed, checked, and the message ids it names pin every byte."""

import json

import pytest

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.identity import Identity
from gauntlet.sparseloco import decode_message
from peers.network.replay import MAX_BYTES, decode_replay, encode_replay, message_id
from wire_helpers import SHAPES, message

VALIDATOR, OTHER = Identity.from_seed("validator"), Identity.from_seed("other")
ID = "ab" * 32


def test_a_replay_list_round_trips_and_is_refused_unless_trusted_and_for_this_run_and_window():
    data = encode_replay(7, [("5A", ID), ("5B", "cd" * 32)], "f" * 64, run="r", signer=VALIDATOR)
    got = decode_replay(data, run="r", window=7, trusted={VALIDATOR.hotkey})
    assert got.window == 7 and got.validator == VALIDATOR.hotkey and got.fingerprint == "f" * 64
    assert got.messages == (("5A", ID), ("5B", "cd" * 32))
    assert len(data) < 600
    with pytest.raises(SignatureError, match="not a trusted validator"):
        decode_replay(data, run="r", window=7, trusted={OTHER.hotkey})
    with pytest.raises(InvalidMessage, match="for run r window 7"):
        decode_replay(data, run="r", window=8, trusted={VALIDATOR.hotkey})
    with pytest.raises(InvalidMessage, match="for run r window 7"):
        decode_replay(data, run="s", window=7, trusted={VALIDATOR.hotkey})
    body = json.loads(data)
    body["messages"] = [["5A", ID]]  # a message dropped after signing
    with pytest.raises(SignatureError, match="does not verify"):
        decode_replay(json.dumps(body).encode(), run="r", window=7, trusted={VALIDATOR.hotkey})


@pytest.mark.parametrize("entries, why", [
    ([["5A", "xyz"]], "64 hex characters"),
    ([["5A"]], "64 hex characters"),
    ([["5B", ID], ["5A", ID]], "once, in order"),
    ([["5A", ID], ["5A", ID]], "once, in order"),
])
def test_malformed_entries_are_refused_before_the_signature_is_checked(entries, why):
    body = json.loads(encode_replay(1, [], "f", run="r", signer=VALIDATOR))
    body["messages"] = entries
    with pytest.raises(InvalidMessage, match=why):
        decode_replay(json.dumps(body).encode(), run="r", window=1, trusted={VALIDATOR.hotkey})


def test_garbage_and_oversized_lists_are_invalid():
    with pytest.raises(InvalidMessage, match="not JSON"):
        decode_replay(b"\xff{", run="r", window=1, trusted={VALIDATOR.hotkey})
    with pytest.raises(InvalidMessage, match="too large"):
        decode_replay(b" " * (MAX_BYTES + 1), run="r", window=1, trusted={VALIDATOR.hotkey})
    with pytest.raises(InvalidMessage, match="wrong fields"):
        decode_replay(b"[]", run="r", window=1, trusted={VALIDATOR.hotkey})


def test_a_message_id_is_the_same_for_the_same_bytes_and_differs_for_others():
    cfg, alice = SparseLoCoConfig(), Identity.from_seed("alice")
    first = decode_message(message(cfg, alice, window=3, run="r"), spec=SHAPES)
    again = decode_message(message(cfg, alice, window=3, run="r"), spec=SHAPES)
    other = decode_message(message(cfg, alice, window=3, run="r", extra={"declared": {"gpu": "x"}}), spec=SHAPES)
    assert message_id(first) == message_id(again) and len(message_id(first)) == 64
    assert message_id(first) != message_id(other)
