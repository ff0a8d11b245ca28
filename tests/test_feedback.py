import pytest
import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.errors import CodecError
from gauntlet.sparseloco import ErrorFeedback

SHAPES = {"w": (256, 192), "v": (97, 131), "b": (192,)}


def test_density_is_k_over_4096_for_tiled_tensors(cfg):
    ef = ErrorFeedback({"w": (2816, 1024)}, cfg)
    ct = ef.compress({"w": torch.randn(2816, 1024)})["w"]
    assert ct.idx.shape == (44 * 16, 64)
    assert ct.idx.numel() / (2816 * 1024) == 64 / 4096


def test_error_feedback_identity_sent_plus_residual_equals_sum_of_deltas():
    # With β = 1 nothing decays: Σ sent + e_T = η Σ Δ (exact up to float rounding).
    cfg = SparseLoCoConfig(ef_decay=1.0, quant_bits=8, min_sparse_numel=1)
    ef = ErrorFeedback(SHAPES, cfg)
    total = {n: torch.zeros(s) for n, s in SHAPES.items()}
    sent = {n: torch.zeros(s) for n, s in SHAPES.items()}
    for _ in range(6):
        delta = {n: torch.randn(s) for n, s in SHAPES.items()}
        for n, ct in ef.compress(delta).items():
            sent[n] += ct.to_dense()
            total[n] += delta[n]
    for n in SHAPES:
        assert torch.allclose(sent[n] + ef.residual(n), total[n], atol=2e-5)


def test_residual_keeps_the_quantisation_error_of_sent_values():
    cfg = SparseLoCoConfig(ef_decay=0.95, ef_scale=1.0)
    ef = ErrorFeedback({"w": (128, 128)}, cfg)
    delta = torch.randn(128, 128)
    ct = ef.compress({"w": delta})["w"]
    expected = delta - ct.to_dense()  # e = β·0 + η·Δ − decode(m)
    assert torch.allclose(ef.residual("w"), expected, atol=1e-6)
    sent_positions = ct.to_dense() != 0
    assert ef.residual("w")[sent_positions].abs().sum() > 0  # 2-bit codes are not exact


def test_decay_and_scale_follow_the_protocol_formula():
    cfg = SparseLoCoConfig(ef_decay=0.5, ef_scale=2.0)
    ef = ErrorFeedback({"w": (64, 64)}, cfg)
    d1, d2 = torch.randn(64, 64), torch.randn(64, 64)
    m1 = ef.compress({"w": d1})["w"].to_dense()
    m2 = ef.compress({"w": d2})["w"].to_dense()
    e1 = 2.0 * d1 - m1
    assert torch.allclose(ef.residual("w"), 0.5 * e1 + 2.0 * d2 - m2, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_any_float_dtype_is_accepted(cfg, dtype):
    ef = ErrorFeedback({"w": (128, 64)}, cfg)
    ct = ef.compress({"w": torch.randn(128, 64).to(dtype)})["w"]
    assert ct.to_dense().dtype == torch.float32


def test_state_round_trips_and_rejects_wrong_shapes(cfg):
    a = ErrorFeedback(SHAPES, cfg)
    a.compress({n: torch.randn(s) for n, s in SHAPES.items()})
    b = ErrorFeedback(SHAPES, cfg)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.buffers[n], b.buffers[n]) for n in SHAPES)
    with pytest.raises(CodecError, match="wrong shape"):
        b.load_state_dict({"ef.w": torch.zeros(3)})


def test_bad_deltas_raise_codec_error(cfg):
    ef = ErrorFeedback(SHAPES, cfg)
    with pytest.raises(CodecError, match="lacks"):
        ef.compress({"w": torch.zeros(256, 192)})
    with pytest.raises(CodecError, match="shape"):
        ef.compress({"w": torch.zeros(3, 3), "v": torch.zeros(97, 131), "b": torch.zeros(192)})
    bad = {n: torch.randn(s) for n, s in SHAPES.items()}
    bad["w"][0, 0] = float("nan")
    with pytest.raises(CodecError, match="NaN"):
        ErrorFeedback(SHAPES, cfg).compress(bad)
