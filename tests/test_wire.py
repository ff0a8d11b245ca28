import hashlib
import json
import math
import random

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.sparseloco import ErrorFeedback, decode_message, encode_message, wire
from gauntlet.sparseloco.compress import CompressedTensor
from wire_helpers import SHAPES, edit_gauntlet_header, join, message, split, updates

RUN = "run-a"


def test_signed_round_trip_preserves_every_value(cfg, alice):
    cts = updates(cfg)
    data = encode_message(cts, window=7, run=RUN, codec=cfg, signer=alice, extra={"note": "hi"})
    msg = decode_message(data, spec=SHAPES, expected_window=7, expected_run=RUN,
                         expected_hotkey=alice.hotkey, expected_codec=cfg)
    assert (msg.window, msg.hotkey, msg.header.extra) == (7, alice.hotkey, {"note": "hi"})
    assert msg.signature is not None and msg.nbytes == len(data)
    for name, ct in cts.items():
        assert torch.equal(msg.tensors[name].to_dense(), ct.to_dense())


def test_messages_are_plain_safetensors_files(cfg, alice):
    loaded = safetensors.torch.load(message(cfg, alice))
    assert loaded["attn.weight::lookup"].shape == (4,) and loaded["norm.weight::raw"].dtype == torch.bfloat16


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_payload_size_is_bits_plus_index_bits_per_kept_value_plus_lookup(alice, bits):
    cfg = SparseLoCoConfig(quant_bits=bits)
    shapes = {"a": (256, 128), "b": (97, 131)}
    data = message(cfg, alice, shapes=shapes)
    header, payload = split(data)
    expected = 0
    for shape in shapes.values():
        kept = ErrorFeedback({"x": shape}, cfg).layouts["x"].kept
        expected += math.ceil(kept * 12 / 8) + math.ceil(kept * bits / 8) + 4 * 2**bits
    assert len(payload) == expected
    assert ErrorFeedback({"x": (256, 128)}, cfg).layouts["x"].kept == 256 * 128 // 64


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.dictionaries(
        st.text("abcdefgh.", min_size=1, max_size=8),
        st.lists(st.integers(1, 70), min_size=1, max_size=3).map(tuple),
        min_size=1, max_size=4,
    ),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    bits=st.sampled_from([2, 4, 8]),
    dense_bits=st.sampled_from([8, 16]),
)
def test_round_trip_over_random_shapes_and_dtypes(alice, shapes, dtype, bits, dense_bits):
    cfg = SparseLoCoConfig(chunk_size=8, topk=4, quant_bits=bits, dense_bits=dense_bits, min_sparse_numel=16)
    ef = ErrorFeedback(shapes, cfg)
    cts = ef.compress({n: torch.randn(s).to(dtype) for n, s in shapes.items()})
    msg = decode_message(encode_message(cts, window=1, run=RUN, codec=cfg, signer=alice), spec=shapes)
    for n in shapes:
        assert torch.equal(msg.tensors[n].to_dense(), cts[n].to_dense())


# ------------------------------------------------------------------------------------- rejections


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_are_rejected(data):
    with pytest.raises(InvalidMessage):
        decode_message(data)


def test_truncation_at_any_offset_is_rejected(cfg, alice):
    data = message(cfg, alice)
    offsets = sorted(set(range(0, 64)) | set(random.Random(0).sample(range(len(data)), 150)))
    for cut in offsets:
        with pytest.raises(InvalidMessage):
            decode_message(data[:cut])


def test_flipped_bits_are_rejected(cfg, alice):
    data = message(cfg, alice)
    rng = random.Random(1)
    for _ in range(100):
        pos = rng.randrange(len(data))
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(InvalidMessage):
            decode_message(bytes(flipped))


def test_huge_declared_shapes_are_rejected_before_anything_is_allocated(cfg, alice, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("tensor data must not be unpacked for a lying header")

    monkeypatch.setattr(wire, "_unpack", boom)
    data = message(cfg, alice)
    for shape in ([1 << 20, 1 << 20], [1 << 40], [1 << 17, 1 << 17]):
        bad = edit_gauntlet_header(data, lambda h, s=shape: h["tensors"][0].update(shape=s))
        with pytest.raises(InvalidMessage):
            decode_message(bad)


def test_oversized_messages_and_headers_are_refused_by_their_declared_size(cfg, alice):
    data = message(cfg, alice)
    with pytest.raises(InvalidMessage, match="over the"):
        decode_message(data, max_bytes=len(data) - 1)
    with pytest.raises(InvalidMessage, match="header declares"):
        decode_message(b"\xff" * 8 + b"{}")
    with pytest.raises(InvalidMessage, match="header declares"):
        decode_message(data, max_header_bytes=64)
    with pytest.raises(InvalidMessage, match="tensors must be a list"):
        decode_message(data, max_tensors=2)


def _signed(cfg, signer, tamper):
    """A correctly signed message whose sparse content was tampered with before signing."""
    cts = updates(cfg, {"w": (32, 32)})
    ct = cts["w"]
    cts["w"] = CompressedTensor(ct.layout, **tamper(ct))
    return encode_message(cts, window=7, run=RUN, codec=cfg, signer=signer)


SMALL = SparseLoCoConfig(chunk_size=8, topk=4, min_sparse_numel=1)  # 64-value chunks, 12-bit indices


def test_out_of_range_indices_are_rejected(alice):
    def tamper(ct):
        idx = ct.idx.clone()
        idx[3, -1] = 64  # chunks hold 64 values: valid indices are 0..63
        return dict(idx=idx, codes=ct.codes, lookup=ct.lookup)

    with pytest.raises(InvalidMessage, match="out of range"):
        decode_message(_signed(SMALL, alice, tamper))


def test_duplicate_indices_are_rejected(alice):
    def tamper(ct):
        idx = ct.idx.clone()
        idx[0, 1] = idx[0, 0]
        return dict(idx=idx, codes=ct.codes, lookup=ct.lookup)

    with pytest.raises(InvalidMessage, match="duplicate"):
        decode_message(_signed(SMALL, alice, tamper))


def test_indices_into_padding_are_rejected(alice):
    cfg = SparseLoCoConfig(chunk_size=8, topk=4, min_sparse_numel=1)
    cts = updates(cfg, {"w": (9, 9)})  # two 5x9 tiles: the last row of the second is padding
    ct = cts["w"]
    idx = ct.idx.clone()
    pad_positions = ct.layout.pad_mask[-1].nonzero().squeeze(1)
    idx[-1] = pad_positions[: ct.layout.k]
    cts["w"] = CompressedTensor(ct.layout, idx=idx, codes=ct.codes, lookup=ct.lookup)
    data = encode_message(cts, window=1, run=RUN, codec=cfg, signer=alice)
    with pytest.raises(InvalidMessage, match="padding"):
        decode_message(data)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_lookup_tables_are_rejected(alice, bad):
    def tamper(ct):
        lookup = ct.lookup.clone()
        lookup[1] = bad
        return dict(idx=ct.idx, codes=ct.codes, lookup=lookup)

    with pytest.raises(InvalidMessage, match="non-finite"):
        decode_message(_signed(SMALL, alice, tamper))


def test_non_finite_dense_values_are_rejected(cfg, alice):
    cts = updates(cfg)
    ct = cts["norm.weight"]
    raw = ct.raw.clone()
    raw[0] = float("nan")
    cts["norm.weight"] = CompressedTensor(ct.layout, raw=raw)
    with pytest.raises(InvalidMessage, match="non-finite"):
        decode_message(encode_message(cts, window=1, run=RUN, codec=cfg, signer=alice))


def test_wrong_window_run_sender_codec_or_model_are_rejected(cfg, alice, bob):
    data = message(cfg, alice, window=7, run=RUN)
    cases = [
        (dict(expected_window=8), "window 7"),
        (dict(expected_run="run-b"), "another run"),
        (dict(expected_hotkey=bob.hotkey), "another hotkey"),
        (dict(expected_codec=cfg.model_copy(update={"topk": 32})), "codec"),
        (dict(spec={**SHAPES, "extra.weight": (4, 4)}), "differ from the model"),
        (dict(spec={**SHAPES, "attn.weight": (192, 128)}), "shape differs"),
    ]
    for kwargs, fragment in cases:
        with pytest.raises(InvalidMessage, match=fragment):
            decode_message(data, **kwargs)


def test_signatures_bind_sender_header_and_payload(cfg, alice, bob):
    data = message(cfg, alice)
    # another key's signature
    header, payload = split(data)
    header["__metadata__"]["signature"] = bob.sign(wire.signing_digest(header["__metadata__"]["gauntlet"])).hex()
    with pytest.raises(SignatureError, match="does not verify"):
        decode_message(join(header, payload))
    # a header edited after signing (replay into another window)
    with pytest.raises(SignatureError):
        decode_message(edit_gauntlet_header(data, lambda h: h.update(window=8)))
    # a payload edited after signing
    header, payload = split(data)
    with pytest.raises(InvalidMessage, match="sha256"):
        decode_message(join(header, payload[:-1] + bytes([payload[-1] ^ 1])))
    # signature removed
    header, payload = split(data)
    del header["__metadata__"]["signature"]
    with pytest.raises(SignatureError, match="not signed"):
        decode_message(join(header, payload))
    assert decode_message(join(header, payload), require_signature=False).signature is None
    # the same signature spelt in uppercase hex: one message, one encoding
    header["__metadata__"]["signature"] = split(data)[0]["__metadata__"]["signature"].upper()
    with pytest.raises(SignatureError, match="lowercase"):
        decode_message(join(header, payload))
    # garbage signatures
    header["__metadata__"]["signature"] = "zz" * 64
    with pytest.raises(SignatureError):
        decode_message(join(header, payload))


def test_swapping_part_offsets_cannot_reinterpret_signed_bytes(cfg, alice):
    header, payload = split(message(cfg, alice))
    a, b = "attn.weight::lookup", "odd.weight::lookup"
    header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
    with pytest.raises(InvalidMessage, match="non-canonical"):
        decode_message(join(header, payload))


def test_structural_lies_are_rejected(cfg, alice):
    data = message(cfg, alice)
    header, payload = split(data)
    for edit in (
        lambda h: h.update(v=2),
        lambda h: h.update(window=-1),
        lambda h: h.update(window="7"),
        lambda h: h["codec"].update(quant_bits=3),
        lambda h: h["codec"].update(chunk_size=True),
        lambda h: h["tensors"].reverse(),
        lambda h: h["tensors"].append(dict(h["tensors"][0])),
        lambda h: h.update(payload_sha256="A" * 64),
        lambda h: h.pop("extra"),
    ):
        with pytest.raises(InvalidMessage):
            decode_message(edit_gauntlet_header(data, edit))
    header["rogue::idx"] = {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}
    with pytest.raises(InvalidMessage, match="do not match"):
        decode_message(join(header, payload))
    h2, _ = split(data)
    h2["__metadata__"]["x"] = "y"
    with pytest.raises(InvalidMessage, match="metadata"):
        decode_message(join(h2, payload))
    with pytest.raises(InvalidMessage, match="must be bytes"):
        decode_message("text")  # type: ignore[arg-type]


def test_header_json_that_is_deeply_nested_is_rejected_cleanly(cfg, alice):
    header, payload = split(message(cfg, alice))
    inner = json.loads(header["__metadata__"]["gauntlet"])
    inner["extra"] = {"x": "[" * 100_000}
    header["__metadata__"]["gauntlet"] = json.dumps(inner)
    with pytest.raises(InvalidMessage):
        decode_message(join(header, payload))
    deep = b"[" * 200_000
    bomb = len(deep).to_bytes(8, "little") + deep
    with pytest.raises(InvalidMessage):
        decode_message(bomb)


def test_digest_is_detachable(cfg, alice):
    header, _ = split(message(cfg, alice))
    head_json = header["__metadata__"]["gauntlet"]
    digest = wire.signing_digest(head_json)
    assert digest.endswith(hashlib.sha256(head_json.encode()).digest())
    from gauntlet.identity import verify_signature

    assert verify_signature(alice.hotkey, digest, bytes.fromhex(header["__metadata__"]["signature"]))
