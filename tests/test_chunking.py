import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gauntlet.config import SparseLoCoConfig
from gauntlet.sparseloco.chunking import make_layout
from gauntlet.sparseloco.compress import select_topk

CFG = SparseLoCoConfig()


def test_divisible_2d_tensor_is_tiled_in_64x64_chunks_keeping_64_each():
    lay = make_layout((2816, 1024), CFG)
    assert (lay.side_r, lay.side_c, lay.tiles_r, lay.tiles_c, lay.k) == (64, 64, 44, 16, 64)
    assert lay.kept / lay.numel == 64 / 4096 and not lay.padded and lay.index_bits == 12


def test_prime_dimensions_keep_large_chunks_instead_of_degrading_to_one():
    lay = make_layout((1021, 4099), CFG)  # both prime
    assert lay.chunk_numel > 3500 and lay.padded
    assert abs(lay.kept / lay.numel - 64 / 4096) < 0.002


def test_any_rank_and_1d_handling():
    assert not make_layout((1024,), CFG).sparse  # 1-D travels dense by default
    assert make_layout((1024 * 8,), CFG.model_copy(update={"sparse_1d": True})).chunk_numel == 4096
    assert not make_layout((), CFG).sparse and not make_layout((8, 8), CFG).sparse  # tiny
    conv = make_layout((64, 32, 3, 3), CFG)
    assert conv.sparse and (conv.rows, conv.cols) == (64, 288)


def test_bigger_chunks_switch_to_16_bit_indices():
    lay = make_layout((256, 256), CFG.model_copy(update={"chunk_size": 128, "topk": 256}))
    assert lay.chunk_numel == 16384 and lay.index_bits == 16 and lay.k == 256


shapes = st.lists(st.integers(1, 90), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, chunk=st.sampled_from([4, 8, 16]))
def test_chunks_round_trip_and_strided_add_matches(shape, chunk):
    cfg = SparseLoCoConfig(chunk_size=chunk, topk=1, min_sparse_numel=1, sparse_1d=True)
    lay = make_layout(tuple(shape), cfg)
    x = torch.randn(shape)
    buf = lay.to_chunks(x)
    assert buf.shape == lay.buffer_shape
    assert torch.equal(lay.from_chunks(buf), x)
    acc = torch.ones(lay.buffer_shape)
    lay.add_into_chunks(acc, x, alpha=2.0)
    assert torch.allclose(acc, torch.ones(lay.buffer_shape) + 2 * buf)
    if lay.pad_mask is not None:
        assert int(lay.pad_mask.sum()) == lay.num_chunks * lay.chunk_numel - math.prod(shape)
        assert not buf[lay.pad_mask].any()


def test_topk_never_selects_padding_even_when_real_values_are_zero():
    cfg = SparseLoCoConfig(chunk_size=8, topk=8, min_sparse_numel=1)
    lay = make_layout((9, 9), cfg)  # 2x2 tiles of 5x5, padded
    buf = lay.to_chunks(torch.zeros(9, 9))
    idx = select_topk(buf, lay)
    assert not lay.pad_mask.gather(1, idx).any()
    assert (idx[:, 1:] > idx[:, :-1]).all()
