"""Worked numbers for every Gauntlet formula (docs/protocol.md §4)."""

import math

import pytest
import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.rating import Rating, power_weights, rate_match, tiered_weights
from gauntlet.scoring import (
    final_score,
    loss_test,
    moving_average,
    relative_improvement,
    steps_behind,
    sync_score,
    uniqueness_indicator,
    weight_sample,
)
from gauntlet.sparseloco.chunking import make_layout
from gauntlet.sparseloco.compress import CompressedTensor
from gauntlet.uniqueness import copy_stats, find_copies


@pytest.mark.parametrize("x, expected", [(0, 1.0), (1, 0.8**2.5), (2, 0.6**2.5), (3, 0.4**2.5), (5, 0.0), (9, 0.0)])
def test_sync_score(x, expected):
    assert sync_score(x) == pytest.approx(expected)
    assert round(sync_score(1), 2) == 0.57 and round(sync_score(3), 2) == 0.10


def test_steps_behind_counts_typical_outer_steps():
    assert steps_behind([1.0, 2.0], [1.0, 2.0], 0.1) == 0.0
    assert steps_behind([1.3, 2.3], [1.0, 2.0], 0.1) == pytest.approx(3.0)
    assert steps_behind([1.0], [1.0, 2.0], 0.1) == math.inf
    assert steps_behind([1.5], [1.0], 0.0) == math.inf


def test_moving_average_indicator_and_final_score():
    assert relative_improvement(4.0, 3.0) == 0.25 and relative_improvement(4.0, 5.0) == -0.25
    assert uniqueness_indicator(0.02, 0.01) == 1 and uniqueness_indicator(0.01, 0.01) == -1
    ma = 0.0
    for _ in range(3):
        ma = moving_average(ma, 1, 0.05)
    assert ma == pytest.approx(1 - 0.95**3)  # 0.142625
    assert moving_average(0.5, -1, 0.05) == pytest.approx(0.425)
    assert final_score(6.0, 0.5, 0.8) == pytest.approx(2.4)
    assert final_score(6.0, -0.2, 1.0) == 0.0
    assert final_score(6.0, 0.5, 0.8, penalty=0.75) == pytest.approx(1.8)


def test_openskill_updates_match_the_library():
    from openskill.models import PlackettLuce

    model = PlackettLuce(mu=25.0, sigma=25 / 3, beta=7.0, tau=0.1)
    a, b, c = model.rating(), model.rating(), model.rating()
    expected = model.rate([[a], [b], [c]], scores=[0.3, 0.1, 0.2])
    got = rate_match({}, {"a": 0.3, "b": 0.1, "c": 0.2})
    for name, team in zip("abc", expected):
        assert got[name].mu == pytest.approx(team[0].mu) and got[name].sigma == pytest.approx(team[0].sigma)
    assert got["a"].mu == pytest.approx(27.456249477209283) and got["b"].ordinal < got["c"].ordinal < got["a"].ordinal
    assert Rating(25.0, 25 / 3).ordinal == pytest.approx(0.0)
    again = rate_match(got, {"a": 0.3, "b": 0.1, "c": 0.2})
    assert again["a"].mu > got["a"].mu and again["a"].sigma < got["a"].sigma


def test_power_weights():
    w = power_weights({1: 2.0, 2: 1.0, 3: -1.0, 4: 0.0})
    assert set(w) == {1, 2} and w[1] / w[2] == pytest.approx(2**2.2) and sum(w.values()) == pytest.approx(1)
    assert power_weights({1: -1.0}) == {}


def test_tiered_weights_burn_ramp_and_reserve_decay():
    w = tiered_weights(list(range(1, 31)), burn_uid=0)
    assert w[0] == 0.5 and sum(w.values()) == pytest.approx(1.0)
    top = [w[u] for u in range(1, 21)]
    assert sum(top) == pytest.approx(0.375) and top[0] / top[-1] == pytest.approx(2.0)
    assert all(a > b for a, b in zip(top, top[1:]))
    assert top[0] == pytest.approx(0.025) and top[-1] == pytest.approx(0.0125)
    tail = [w[u] for u in range(21, 31)]
    assert sum(tail) == pytest.approx(0.125)
    assert all(b / a == pytest.approx(0.5) for a, b in zip(tail, tail[1:]))
    assert tiered_weights([], burn_uid=0) == {0: 1.0}
    few = tiered_weights([5, 6], burn_uid=0)  # no next tier: the top tier takes the whole rest
    assert few[5] + few[6] == pytest.approx(0.5) and few[5] / few[6] == pytest.approx(2.0 / (2.0 - 1 / 19))


LAY = make_layout((4, 4), SparseLoCoConfig(chunk_size=4, topk=4, min_sparse_numel=1))  # one chunk, keep 4


def sparse(indices, values):
    codes = torch.arange(4, dtype=torch.uint8).view(1, 4)
    return {"w": CompressedTensor(LAY, idx=torch.tensor([indices]), codes=codes, lookup=torch.tensor(values))}


def test_overlap_of_hand_made_index_sets():
    a = sparse([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0])
    b = sparse([2, 3, 4, 5], [3.0, 4.0, 5.0, 6.0])  # shares 2 of 4 with a, same values there
    c = sparse([8, 9, 10, 11], [1.0, 1.0, 1.0, 1.0])
    d = sparse([0, 1, 2, 7], [-1.0, -2.0, -3.0, 1.0])  # shares 3 with a, opposite values
    stats = copy_stats([a, b, c, d])
    assert stats.overlap.tolist() == [[1.0, 0.5, 0.0, 0.75], [0.5, 1.0, 0.0, 0.25], [0.0, 0.0, 1.0, 0.0],
                                      [0.75, 0.25, 0.0, 1.0]]
    assert stats.cosine[0, 1].item() == pytest.approx(1.0) and stats.cosine[0, 3].item() == pytest.approx(-1.0)
    assert stats.cosine[0, 2].item() == 0.0


def test_the_later_uploader_of_a_copied_pair_is_the_offender():
    a = sparse([0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0])
    b = sparse([0, 1, 2, 3], [1.1, 2.1, 2.9, 4.0])
    c = sparse([0, 1, 8, 9], [1.0, 2.0, 5.0, 5.0])  # half the threshold, values identical on shared
    d = sparse([12, 13, 14, 15], [1.0, 1.0, 1.0, 1.0])
    stats = copy_stats([a, b, c, d])
    times = {"A": 10.0, "B": 11.0, "C": 12.0, "D": 9.0}
    found = find_copies(["A", "B", "C", "D"], stats, times, threshold=0.6, value_similarity=0.95)
    assert [(f.offender, f.original) for f in found] == [("B", "A"), ("C", "A")]
    assert found[0].overlap == 1.0 and found[1].overlap == 0.5


def test_the_loss_test_restores_the_weights_bit_exactly():
    from gauntlet.config import ModelConfig
    from gauntlet.models import build_model, mean_loss

    model = build_model(ModelConfig(preset="tiny", device="cpu"), 256, 32, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    update = {n: torch.randn(p.shape) * 1e-2 for n, p in model.named_parameters()}
    own = [torch.randint(0, 256, (2, 32))]
    rand = [torch.randint(0, 256, (2, 32))]
    result = loss_test(model, update, 0.2, own, rand, random_before=mean_loss(model, rand))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert result.own_before != result.own_after
    assert mean_loss(model, own) == result.own_before


def test_weight_samples_are_deterministic_and_spread_over_tensors():
    params = {"a": torch.arange(10.0), "b": torch.arange(1000.0) + 1000}
    s1, s2 = weight_sample(params, 64, seed=3), weight_sample(params, 64, seed=3)
    assert s1 == s2 and sum(v >= 1000 for v in s1) > 50  # sampled in proportion to tensor size
    assert weight_sample(params, 64, seed=4) != s1
