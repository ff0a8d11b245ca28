import pytest
import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import CodecError
from gauntlet.sparseloco.chunking import make_layout
from gauntlet.sparseloco.compress import compress_buffer
from gauntlet.sparseloco.quant import dequantize, quantize


def test_gaussian_input_uses_all_four_two_bit_codes_decoding_to_bin_means():
    x = torch.randn(20_000)
    codes, lookup = quantize(x, 2, 6.0)
    assert codes.dtype == torch.uint8 and lookup.shape == (4,)
    assert set(codes.unique().tolist()) == {0, 1, 2, 3}
    for j in range(4):
        assert lookup[j].item() == pytest.approx(x[codes == j].mean().item(), rel=1e-5)
    assert torch.equal(dequantize(codes, lookup), lookup[codes.long()])


def test_bins_are_1p5_sigma_wide_and_symmetric_about_the_mean():
    # 6σ range over 4 bins: boundaries at μ-1.5σ, μ, μ+1.5σ
    x = torch.tensor([-1.0, 1.0] * 50 + [-3.0, 3.0])  # μ = 0, σ ≈ 1.04
    codes, _ = quantize(x, 2, 6.0)
    assert codes[:100].tolist() == [1, 2] * 50 and codes[100:].tolist() == [0, 3]


def test_gaussian_top_k_through_the_codec_uses_all_four_codes():
    cfg = SparseLoCoConfig()
    lay = make_layout((1024, 2048), cfg)
    ct = compress_buffer(lay.to_chunks(torch.randn(1024, 2048)), lay, cfg)
    assert set(ct.codes.unique().tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_error_inside_the_range_is_below_one_bin_width(bits):
    x = torch.randn(50_000)
    codes, lookup = quantize(x, bits, 6.0)
    inside = (x - x.mean()).abs() < 2.9 * x.std()  # away from the clamped tails
    err = (dequantize(codes, lookup) - x)[inside].abs().max() / x.std()
    assert err < 6.0 / 2**bits


def test_constant_values_decode_exactly_and_empty_bins_get_finite_centres():
    codes, lookup = quantize(torch.full((10,), 0.25), 2, 6.0)
    assert torch.equal(dequantize(codes, lookup), torch.full((10,), 0.25))
    assert torch.isfinite(lookup).all()


def test_non_finite_values_raise_codec_error():
    with pytest.raises(CodecError, match="NaN or Inf"):
        quantize(torch.tensor([1.0, float("nan")]), 2, 6.0)
