import math

import pytest
import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.sparseloco import ErrorFeedback, aggregate, fingerprint, outer_step
from gauntlet.sparseloco.aggregate import aggregate_tensor, clip_scales, median_norms, rescale_factor, value_norm
from gauntlet.sparseloco.chunking import make_layout
from gauntlet.sparseloco.compress import CompressedTensor

# One 2x2 tensor = one chunk of 4 values; each peer keeps 2 of them.
LAYOUT = make_layout((2, 2), SparseLoCoConfig(chunk_size=2, topk=2, min_sparse_numel=1))


def peer(idx, values):
    lookup = torch.tensor(values + [0.0, 0.0], dtype=torch.float32)
    codes = torch.tensor([[0, 1]], dtype=torch.uint8)
    return CompressedTensor(LAYOUT, idx=torch.tensor([idx]), codes=codes, lookup=lookup)


A = peer([0, 1], [1.0, 2.0])  # dense: [[1, 2], [0, 0]]
B = peer([1, 3], [4.0, 6.0])  # dense: [[0, 4], [0, 6]]


def test_mean_divides_by_the_number_of_peers():
    out = aggregate_tensor([A, B], "mean", clip_to_median=False)
    assert out.tolist() == [[0.5, 3.0], [0.0, 3.0]]


def test_scatter_mean_divides_each_coordinate_by_its_senders():
    out = aggregate_tensor([A, B], "scatter_mean", clip_to_median=False)
    assert out.tolist() == [[1.0, 3.0], [0.0, 6.0]]


def test_median_clipping_scales_only_peers_above_the_median():
    C = peer([0, 2], [30.0, 40.0])  # norm 50
    norms = [math.sqrt(5), math.sqrt(52), 50.0]
    assert clip_scales(torch.tensor(norms)).tolist() == pytest.approx([1.0, 1.0, math.sqrt(52) / 50])
    out = aggregate_tensor([A, B, C], "mean", clip_to_median=True)
    s = math.sqrt(52) / 50
    expected = [[(1 + 30 * s) / 3, (2 + 4) / 3], [40 * s / 3, 6 / 3]]
    assert out.flatten().tolist() == pytest.approx(sum(expected, []), rel=1e-6)


def test_even_peer_count_uses_the_lower_median():
    out = aggregate_tensor([A, B], "scatter_mean", clip_to_median=True)
    s = math.sqrt(5) / math.sqrt(52)  # B clipped to A's norm
    assert out.flatten().tolist() == pytest.approx([1.0, (2 + 4 * s) / 2, 0.0, 6 * s], rel=1e-6)


def test_the_window_median_norm_is_the_lower_median_per_tensor():
    norms = [{"w": 1.0, "b": 9.0}, {"w": 3.0, "b": 2.0}, {"w": 2.0}, {"w": 8.0, "b": 4.0}]
    assert median_norms(norms) == {"w": 2.0, "b": 4.0}  # b: three peers, w: four (lower median)
    assert median_norms([]) == {}


def test_an_update_and_its_multiple_are_measured_at_the_same_norm():
    tripled = peer([1, 3], [12.0, 18.0])
    for part in (B, tripled):
        assert float(rescale_factor(value_norm(part), 5.0) * value_norm(part)) == pytest.approx(5.0, rel=1e-6)
    assert float(rescale_factor(value_norm(tripled), 5.0)) == pytest.approx(5.0 / (3 * math.sqrt(52)), rel=1e-6)
    zero = peer([0, 1], [0.0, 0.0])
    assert float(rescale_factor(value_norm(zero), 5.0)) == 1.0  # nothing to rescale


def test_dense_tensors_are_averaged_and_clipped():
    lay = make_layout((3,), SparseLoCoConfig())
    p1 = CompressedTensor(lay, raw=torch.tensor([1.0, 0.0, 0.0]).bfloat16())
    p2 = CompressedTensor(lay, raw=torch.tensor([0.0, 4.0, 0.0]).bfloat16())
    assert aggregate_tensor([p1, p2], clip_to_median=True).tolist() == [0.5, 0.5, 0.0]
    assert aggregate_tensor([p1, p2], clip_to_median=False).tolist() == [0.5, 2.0, 0.0]


def test_outer_step_is_plain_sgd_and_nodes_agree_bit_for_bit(cfg):
    shapes = {"w": (192, 128), "b": (128,)}
    updates = []
    for _ in range(5):
        ef = ErrorFeedback(shapes, cfg)
        updates.append(ef.compress({n: torch.randn(s) for n, s in shapes.items()}))
    agg = aggregate(updates)
    models = []
    for _ in range(2):
        params = {n: torch.ones(s) for n, s in shapes.items()}
        outer_step(params, aggregate(updates), lr=0.5)
        models.append(params)
    assert torch.allclose(models[0]["w"], 1 - 0.5 * agg["w"])
    assert fingerprint(models[0]) == fingerprint(models[1])
    models[1]["w"][0, 0] += 1e-7
    assert fingerprint(models[0]) != fingerprint(models[1])


def test_aggregate_refuses_mismatched_inputs():
    with pytest.raises(ValueError):
        aggregate([])
    with pytest.raises(ValueError, match="different sets"):
        aggregate([{"a": A}, {"b": A}])
    with pytest.raises(ValueError, match="combine"):
        aggregate_tensor([A], "median")


@pytest.mark.parametrize("combine", ["mean", "scatter_mean"])
@pytest.mark.parametrize("clip", [True, False])
def test_one_peer_at_a_time_gives_the_same_bits_as_all_peers_at_once(combine, clip):
    from gauntlet.sparseloco.aggregate import aggregate_stream
    from gauntlet.sparseloco.sharding import shard_rows

    shapes = {"a": (200, 300), "b": (4096, 17), "c": (5000,), "d": (30,), "e": (3, 7000)}
    cfg = SparseLoCoConfig(sparse_1d=True)
    g = torch.Generator().manual_seed(1)
    updates = [ErrorFeedback(shapes, cfg).compress({n: torch.randn(s, generator=g) * (p + 1) for n, s in
                                                    shapes.items()}) for p in range(5)]
    loads = []
    whole = aggregate_stream(lambda p: loads.append(p) or updates[p], 5, combine, clip)
    assert loads == [0, 1, 2, 3, 4] * 2  # two passes, one peer in memory at a time
    expected = aggregate(updates, combine, clip)
    assert all(torch.equal(whole[n], expected[n]) for n in shapes)
    rows = {n: shard_rows(s[0], 3, 1) for n, s in shapes.items()}  # a rank's rows
    part = aggregate_stream(lambda p: updates[p], 5, combine, clip, rows)
    assert all(torch.equal(part[n], aggregate(updates, combine, clip, rows)[n]) for n in shapes)


def test_one_peer_at_a_time_refuses_mismatched_peers():
    from gauntlet.errors import InvalidMessage
    from gauntlet.sparseloco.aggregate import aggregate_stream

    cfg = SparseLoCoConfig()
    a = ErrorFeedback({"w": (64, 64)}, cfg).compress({"w": torch.randn(64, 64)})
    b = ErrorFeedback({"v": (64, 64)}, cfg).compress({"v": torch.randn(64, 64)})
    with pytest.raises(InvalidMessage, match="different sets"):
        aggregate_stream(lambda p: [a, b][p], 2)
    with pytest.raises(ValueError):
        aggregate_stream(lambda p: a, 0)
