import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gauntlet.sparseloco import bitpack


@settings(max_examples=50, deadline=None)
@given(bits=st.sampled_from([1, 2, 4, 8]), n=st.integers(0, 300), seed=st.integers(0, 2**16))
def test_codes_round_trip_with_exact_size(bits, n, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.uint8)
    packed = bitpack.pack_codes(codes, bits)
    assert packed.numel() == bitpack.packed_len(n, bits) == (n * bits + 7) // 8
    assert torch.equal(bitpack.unpack_codes(packed, bits, n), codes)
    assert bitpack.codes_padding_ok(packed, bits, n)


@settings(max_examples=50, deadline=None)
@given(bits=st.sampled_from([12, 16]), n=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_indices_round_trip_with_exact_size(bits, n, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 1 << bits, (n,), generator=g)
    packed = bitpack.pack_indices(idx, bits)
    assert packed.numel() == (n * bits + 7) // 8
    assert torch.equal(bitpack.unpack_indices(packed, bits, n), idx)
    assert bitpack.index_padding_ok(packed, bits, n)


def test_extreme_index_values_survive():
    for bits, top in ((12, 4095), (16, 65535)):
        idx = torch.tensor([0, top, 1, top - 1, 2048])
        assert torch.equal(bitpack.unpack_indices(bitpack.pack_indices(idx, bits), bits, 5), idx)


def test_two_bit_codes_pack_four_per_byte_low_bits_first():
    assert bitpack.pack_codes(torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8), 2).tolist() == [0b00111001, 0b11]


def test_nonzero_filler_bits_are_detected():
    packed = bitpack.pack_codes(torch.tensor([1, 1, 1], dtype=torch.uint8), 2)
    packed[-1] |= 0b11000000
    assert not bitpack.codes_padding_ok(packed, 2, 3)
    p12 = bitpack.pack_indices(torch.tensor([5, 6, 7]), 12)
    p12[-1] |= 0xF0
    assert not bitpack.index_padding_ok(p12, 12, 3)


def test_unknown_index_width_is_refused():
    with pytest.raises(ValueError):
        bitpack.pack_indices(torch.tensor([1]), 10)
