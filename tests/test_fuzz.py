"""Property-based fuzzing of everything a stranger can hand a node: messages, bucket cards, and the
settings a user types. Every input ends in a value or a typed error, in bounded time and memory.

The message fuzzers re-sign what they mutate with a registered key: the realistic attacker is a
peer who signs garbage, so the signature check must not be the only thing standing.
"""

import hashlib
import json
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gauntlet.config import GauntletConfig, SparseLoCoConfig, load_config
from gauntlet.errors import ConfigError, GauntletError, InvalidCommitment
from gauntlet.identity import Identity
from gauntlet.sparseloco import Message, decode_message
from gauntlet.sparseloco.wire import signing_digest
from gauntlet.storage import BucketCard
from wire_helpers import SHAPES, join, message, split

CFG = SparseLoCoConfig()
MALLORY = Identity.from_seed("mallory")
VALID = message(CFG, MALLORY)
HEADER, PAYLOAD = split(VALID)
INNER = json.loads(HEADER["__metadata__"]["gauntlet"])
MEMORY_BUDGET_KB = 64 * 1024  # decoding a 2.6 kB message may never need more than this on top
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def peak_rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: resets the peak resident set size
        f.write("5")


def _can_reset_peak() -> bool:
    try:
        reset_peak()
        return True
    except OSError:
        return False


# the message fuzzers measure memory by resetting the peak resident set size; the others need nothing
measures_memory = pytest.mark.skipif(not _can_reset_peak(), reason="this kernel does not let a process reset "
                                     "its peak memory (/proc/self/clear_refs)")


def signed(header: dict, inner: dict, payload: bytes, fix_hash: bool = True) -> bytes:
    """A message whose gauntlet header is ``inner``, re-signed by mallory (a registered peer)."""
    if fix_hash:
        inner = {**inner, "payload_sha256": hashlib.sha256(payload).hexdigest()}
    text = json.dumps(inner, sort_keys=True, separators=(",", ":"))
    meta = {"gauntlet": text, "signature": MALLORY.sign(signing_digest(text)).hex()}
    return join({**header, "__metadata__": meta}, payload)


def decode_bounded(data: bytes) -> Message | None:
    """Decode as a validator does: fast and small whatever happens; a failure is typed, and a message
    that passes is exactly what the validator asked for (run, codec, tensors, shapes, finite values)."""
    reset_peak()
    base = peak_rss_kb()
    t0 = time.perf_counter()
    try:
        msg = decode_message(data, spec=SHAPES, expected_run="run-a", expected_codec=CFG, max_bytes=1 << 20)
    except GauntletError:
        msg = None
    assert time.perf_counter() - t0 < 2.0
    assert peak_rss_kb() - base < MEMORY_BUDGET_KB
    if msg is not None:
        assert msg.header.run == "run-a" and msg.header.hotkey in (MALLORY.hotkey, INNER["hotkey"])
        assert msg.nbytes == len(data)
        dense = {n: ct.to_dense() for n, ct in msg.tensors.items()}
        assert {n: tuple(t.shape) for n, t in dense.items()} == {n: tuple(s) for n, s in SHAPES.items()}
        assert all(bool(t.isfinite().all()) for t in dense.values())
    return msg


@measures_memory
def test_the_unchanged_message_passes_the_same_checks():
    assert decode_bounded(VALID) is not None


@measures_memory
@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_overwritten_bytes_anywhere(edits):
    data = bytearray(VALID)
    for pos, value in edits:
        data[pos] = value
    decode_bounded(bytes(data))


@measures_memory
@FUZZ
@given(st.integers(0, len(VALID) - 1), st.binary(min_size=0, max_size=64), st.integers(0, 64))
def test_spliced_and_cut_bytes(at, insert, cut):
    decode_bounded(VALID[:at] + insert + VALID[at + cut:])


SHAPE_VALUES = st.one_of(st.integers(-2, 3), st.integers(2**31, 2**63), st.just(10**30), st.floats(),
                         st.text(max_size=3), st.none())


@measures_memory
@FUZZ
@given(st.sampled_from(range(len(INNER["tensors"]))), st.lists(SHAPE_VALUES, min_size=0, max_size=10))
def test_header_bombs_in_declared_shapes_are_refused_before_allocation(which, shape):
    inner = json.loads(json.dumps(INNER))
    inner["tensors"][which]["shape"] = shape
    decode_bounded(signed(HEADER, inner, PAYLOAD))


@measures_memory
@FUZZ
@given(st.sampled_from(sorted(k for k in HEADER if k != "__metadata__")),
       st.sampled_from(["dtype", "shape", "data_offsets"]),
       st.one_of(st.sampled_from(["F64", "I64", "U8", "BOOL", "F16", "XX", ""]), st.lists(st.integers(-5, 2**40),
                                                                                          max_size=4),
                 st.integers(), st.none()))
def test_wrong_dtypes_shapes_and_offsets_of_parts(part, field, value):
    header = json.loads(json.dumps(HEADER))
    header[part][field] = value
    decode_bounded(signed(header, INNER, PAYLOAD))


@measures_memory
@FUZZ
@given(st.binary(min_size=len(PAYLOAD), max_size=len(PAYLOAD)))
def test_random_payload_under_a_valid_signed_header(payload):
    # indices out of range or repeated, codes anywhere, NaN/Inf lookups and raw values: all signed
    decode_bounded(signed(HEADER, INNER, payload))


@measures_memory
@FUZZ
@given(st.sampled_from(["v", "run", "window", "hotkey", "codec", "tensors", "payload_sha256", "extra"]),
       st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8))
def test_any_value_in_any_signed_header_field(key, value):
    decode_bounded(signed(HEADER, {**INNER, key: value}, PAYLOAD, fix_hash=key != "payload_sha256"))


@measures_memory
@FUZZ
@given(st.integers(0, 2**64 - 1))
def test_a_lying_header_length_prefix(n):
    decode_bounded(struct.pack("<Q", n) + VALID[8:])


# -------------------------------------------------------------------------------- cards, commitments

CARD = BucketCard("s3", "https://s3.example.com", "bucket-name", "us-east-1", "READKEY", "read-secret").encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(CARD) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(CARD)))
def test_mutated_bucket_cards_decode_or_raise_invalid_commitment(edits, keep):
    data = bytearray(CARD)
    for pos, value in edits:
        data[pos] = value
    data = bytes(data[:keep] if keep < len(CARD) else data)
    try:
        card = BucketCard.decode(data)
    except InvalidCommitment:
        return
    assert card.encode() == data  # what decodes is a card, and exactly the bytes it came from
    assert card.scheme in ("s3", "file")


FIELD = st.text(st.characters(blacklist_characters="\x00\r\n", blacklist_categories=("Cs",)), max_size=40)
VALID_CARDS = st.one_of(
    st.builds(lambda loc, b, r, k, sec: BucketCard("s3", loc, b or "b", r, k, sec).encode(), FIELD, FIELD, FIELD,
              FIELD, FIELD),
    st.builds(lambda d, note: BucketCard("file", "/" + d, note=note).encode(), FIELD, FIELD))


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=384), VALID_CARDS))
def test_garbage_commitments_read_back_from_the_chain_are_cards_or_typed_errors(tmp_path_factory, blob):
    from gauntlet.chain.local import LocalChain

    chain = LocalChain(tmp_path_factory.mktemp("chain") / "c.db", clock="manual")
    who = Identity.from_seed(f"garbage-{hashlib.sha256(blob).hexdigest()[:8]}")
    chain.register(who.hotkey)
    chain.commit(who, blob)
    (commitment,) = chain.commitments().values()
    assert commitment.data == blob  # stored and read back as sent
    try:
        card = BucketCard.decode(commitment.data)  # what a node's directory does with each
    except InvalidCommitment:
        return
    assert card.encode() == blob


# ------------------------------------------------------------------------------------------- config

SECTIONS = sorted(GauntletConfig.model_fields)


def assert_sound(cfg: GauntletConfig) -> None:
    """A config that loads is valid as a whole (it validates again to itself) and hashes stably."""
    assert isinstance(cfg, GauntletConfig)
    again = GauntletConfig.model_validate(cfg.model_dump())
    assert again == cfg and again.run_hash() == cfg.run_hash()


def test_settings_that_load_are_sound():
    assert_sound(load_config(overrides=["inner.steps=3", "sparseloco.topk=32"]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(lambda s, f, v: f"{s}.{f}={v}", st.sampled_from(SECTIONS + ["nope", ""]),
                          st.text(max_size=12), st.text(max_size=16)), max_size=3))
def test_any_override_is_a_config_or_a_config_error(overrides):
    try:
        cfg = load_config(overrides=overrides)
    except ConfigError:
        return
    assert_sound(cfg)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300), st.sampled_from([".toml", ".json"]))
def test_any_config_file_is_a_config_or_a_config_error(tmp_path, text, suffix):
    path = tmp_path / f"settings{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError:
        return
    assert_sound(cfg)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.text(max_size=10),
                       st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.booleans(), st.none()),
                       max_size=3), max_size=3))
def test_structured_json_config_files_with_wrong_types(tmp_path, doc):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError:
        return
    assert_sound(cfg)
