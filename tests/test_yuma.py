"""Yuma Consensus as the chain computes it: the reference cases of subtensor's epoch tests
(``pallets/subtensor/src/tests/epoch.rs`` and its Yuma3 cases), with their inputs and asserted outputs,
exact where they assert exact values."""

import pytest

from gauntlet.chain.yuma import (
    ONE,
    U16_MAX,
    YumaParams,
    div,
    epoch,
    fx,
    mul,
    owner_share,
    quantize_weights,
    stored_weights,
    weighted_median,
)


class Chain:
    """The few chain states an epoch test walks through: stakes, weights as stored, bonds,
    permits, the blocks of the last weights and of registration."""

    def __init__(self, stake, params, registered_at=0, first_epoch=None):
        n = len(stake)
        self.stake, self.params = list(stake), params
        self.block = registered_at if first_epoch is None else first_epoch
        self.weights, self.bonds = [{} for _ in range(n)], [{} for _ in range(n)]
        self.last_update, self.registered_at = [0] * n, [registered_at] * n
        self.permits = [False] * n
        self.epoch()  # the first epoch hands out the validator permits

    def set_weights(self, uid, row):
        self.weights[uid] = stored_weights(row)
        self.last_update[uid] = self.block

    def epoch(self, block=None):
        self.block = self.block if block is None else block
        result = epoch(self.stake, self.weights, self.bonds, self.last_update, self.registered_at, self.block,
                       self.params, validator_permit=self.permits)
        self.permits, self.bonds = result.validator_permit, result.bonds
        return result


def test_fixed_point_rounds_like_the_chain():
    assert fx(3) == 3 * ONE and mul(fx(3), fx(2)) == fx(6)
    assert mul(1, 1) == 0  # 2^-64 rounds down to 0
    assert mul(-1, 1) == -1  # toward −∞, as an arithmetic shift does
    assert div(fx(1), fx(3)) == 1431655765  # 0.333… truncated
    assert div(-fx(1), fx(3)) == -1431655765  # toward zero
    assert div(fx(1), 0) == 0  # safe_div
    assert div(fx(1 << 40), 1) == (1 << 63) - 1  # saturates


def test_weighted_median_takes_the_weight_that_the_majority_of_stake_reaches():
    stake = [div(fx(1), fx(4))] * 4  # four equal stakes
    kappa = div(fx(32767), fx(U16_MAX))
    total = sum(stake)
    assert weighted_median(stake, [div(fx(1), fx(2))] * 2 + [0, 0], range(4), total - kappa, 0, total) \
        == div(fx(1), fx(2))
    assert weighted_median(stake, [fx(1), 0, 0, 0], range(4), total - kappa, 0, total) == 0


def test_active_stake():
    """subtensor ``test_active_stake``: validators whose weights are older than the activity cutoff
    lose their share of dividends; classic Yuma, stakes 1/1/1/1, two validators, two servers."""
    chain = Chain([1, 1, 1, 1], YumaParams(tempo=1, yuma3=False, max_allowed_validators=4))
    chain.block = 1
    for uid in (0, 1):
        chain.set_weights(uid, {2: U16_MAX // 2, 3: U16_MAX // 2})
    result = chain.epoch()
    assert result.dividends[:2] == [32767, 32767]  # floor(0.5 · 65535)
    assert result.emission == [250_000_000] * 4
    assert all(chain.bonds[v] == {2: 65535, 3: 65535} for v in (0, 1))

    chain.block = 5002  # uid 1's weights (block 1) are now beyond the cutoff of 5000 blocks
    chain.set_weights(0, {2: U16_MAX // 2, 3: U16_MAX // 2})
    result = chain.epoch()
    assert result.dividends[:2] == [36044, 29490]
    assert result.emission == [274_999_999, 224_999_999, 250_000_000, 250_000_000]
    assert chain.bonds[0] == {2: 65535, 3: 65535} and chain.bonds[1] == {2: 53619, 3: 53619}

    chain.set_weights(1, {2: U16_MAX // 2, 3: U16_MAX // 2})
    result = chain.epoch(5003)
    assert result.dividends[:2] == [35716, 29818]
    assert result.emission == [272_501_132, 227_498_866, 250_000_000, 250_000_000]
    assert chain.bonds[0] == {2: 65535, 3: 65535} and chain.bonds[1] == {2: 54712, 3: 54712}


def test_bonds():
    """subtensor ``test_bonds``: the bonds' moving average over seven epochs as validators move
    their weight to themselves (masked) or to one server; classic Yuma, bonds penalty 1."""
    chain = Chain([1, 2, 3, 4, 0, 0, 0, 0], YumaParams(tempo=1, yuma3=False, max_allowed_validators=8,
                                                       bonds_penalty=U16_MAX))
    chain.block = 1
    for uid in range(4):
        chain.set_weights(uid, {4: U16_MAX // 4, 5: U16_MAX // 2, 6: (U16_MAX // 4) * 3, 7: U16_MAX})

    def bonds_on(server):
        return [chain.bonds[v].get(server) for v in range(4)]

    result = chain.epoch(1)
    assert bonds_on(4) == [16383, 32767, 49151, 65535]
    assert result.emission == [49_999_998, 99_999_999, 150_000_000, 200_000_001, 49_998_779, 100_000_610,
                               149_996_337, 200_004_272]
    steps = [  # (uid that sets weights, its row, the server checked, the bonds on it, emission)
        (0, {0: U16_MAX}, 4, [14582, 32767, 49151, 65535], None),  # a self-weight only: masked
        (1, {1: U16_MAX}, 4, [12603, 28321, 49151, 65535], None),
        (2, {2: U16_MAX}, 7, [12602, 28320, 49150, 65535],
         [99_999_999, 199_999_999, 299_999_999, 399_999_999, 0, 0, 0, 0]),  # no weights left: by stake
        (2, {7: U16_MAX}, 7, [10951, 24609, 49150, 65535],
         [36_443_733, 81_898_628, 163_565_493, 218_092_144, 0, 0, 0, 500_000_000]),
        (None, None, 7, [9559, 21482, 49150, 65535],
         [32_799_427, 73_706_612, 168_638_129, 224_855_830, 0, 0, 0, 500_000_000]),
        (None, None, 7, [8376, 18824, 49150, 65535],
         [29_518_068, 66_336_137, 173_203_134, 230_942_659, 0, 0, 0, 500_000_000]),
    ]
    for uid, row, server, bonds, emission in steps:
        if uid is not None:
            chain.set_weights(uid, row)
        result = chain.epoch(chain.block + 1)
        assert bonds_on(server) == bonds
        if emission is not None:
            assert result.emission == emission


YUMA3 = YumaParams(tempo=1, yuma3=True, liquid_alpha=True, alpha_low=round(0.1 * U16_MAX),
                   alpha_high=round(0.3 * U16_MAX), alpha_sigmoid_steepness=1000, bonds_penalty=0,
                   bonds_moving_average=975_000, kappa=U16_MAX // 2, max_allowed_validators=3)
TO_1, TO_2 = {3: U16_MAX, 4: 0}, {3: 0, 4: U16_MAX}


def run_yuma3(moves, targets):
    """Three validators (stakes 8/1/1) and two servers; ``moves``: epoch -> each validator's row;
    ``targets``: per epoch (the bonds of the validators on servers 3 and 4, the dividends)."""
    chain = Chain([8, 1, 1, 0, 0], YUMA3, registered_at=1, first_epoch=2)  # weights then go in at block 2
    for number, (bonds, dividends) in enumerate(targets):
        for uid, row in enumerate(moves.get(number, [])):
            chain.set_weights(uid, row)
        result = chain.epoch(chain.block + 1)
        assert [d / U16_MAX for d in result.dividends] == pytest.approx(dividends, abs=1e-3), number
        got = [[chain.bonds[v].get(s, 0) / U16_MAX for s in (3, 4)] for v in range(3)]
        assert [x for row in got for x in row] == pytest.approx([x for row in bonds for x in row], abs=1e-3), number


def test_yuma_3_kappa_moves_first():
    """subtensor ``test_yuma_3_kappa_moves_first``: the big validator moves to server 2 first."""
    run_yuma3({0: [TO_1] * 3, 1: [TO_2, TO_1, TO_1], 2: [TO_2, TO_2, TO_1], 3: [TO_2] * 3}, [
        ([[0.1013, 0], [0.1013, 0], [0.1013, 0]], [0.8, 0.1, 0.1, 0, 0]),
        ([[0.0908, 0.1013], [0.3697, 0], [0.3697, 0]], [1.0, 0, 0, 0, 0]),
        ([[0.0815, 0.1924], [0.3170, 0.1013], [0.5580, 0]], [0.9382, 0.0618, 0, 0, 0]),
        ([[0.0731, 0.2742], [0.2765, 0.1924], [0.4306, 0.1013]], [0.8819, 0.0773, 0.0407, 0, 0]),
        ([[0.0656, 0.3478], [0.2435, 0.2742], [0.3589, 0.1924]], [0.8564, 0.0844, 0.0592, 0, 0]),
        ([[0.0588, 0.4139], [0.2157, 0.3478], [0.3089, 0.2742]], [0.8418, 0.0884, 0.0697, 0, 0]),
    ])


def test_yuma_3_kappa_moves_second():
    """subtensor ``test_yuma_3_kappa_moves_second``: a small eager validator moves first and earns
    the bonds of the move."""
    run_yuma3({0: [TO_1] * 3, 1: [TO_1, TO_2, TO_1], 2: [TO_2, TO_2, TO_1], 3: [TO_2] * 3}, [
        ([[0.1013, 0], [0.1013, 0], [0.1013, 0]], [0.8, 0.1, 0.1, 0, 0]),
        ([[0.1924, 0], [0.0908, 0.2987], [0.1924, 0]], [0.8446, 0.0498, 0.1056, 0, 0]),
        ([[0.1715, 0.1013], [0.0815, 0.3697], [0.4336, 0]], [0.6868, 0.3132, 0, 0, 0]),
        ([[0.1531, 0.1924], [0.0731, 0.4336], [0.3608, 0.1013]], [0.7421, 0.2090, 0.0489, 0, 0]),
        ([[0.1369, 0.2742], [0.0656, 0.4910], [0.3103, 0.1924]], [0.7625, 0.1706, 0.0669, 0, 0]),
        ([[0.1225, 0.3478], [0.0588, 0.5426], [0.2712, 0.2742]], [0.7730, 0.1508, 0.0762, 0, 0]),
    ])


def test_permits_go_to_the_top_stakes_and_only_permitted_active_validators_count():
    params = YumaParams(tempo=1, max_allowed_validators=2)
    chain = Chain([5, 3, 1, 0], params)
    assert chain.permits == [True, True, False, False]
    chain.block = 1
    chain.set_weights(2, {3: U16_MAX})  # no permit: its weights are ignored
    result = chain.epoch(2)
    assert result.incentive == [0, 0, 0, 0] and result.emission[3] == 0
    assert sum(result.emission) <= 1_000_000_000


def test_a_self_weight_earns_nothing_and_the_owner_keeps_its_own():
    stake, lu, reg = [1, 1, 0], [1, 1, 0], [0, 0, 0]
    rows = [{0: U16_MAX}, {2: U16_MAX}, {}]
    plain = epoch(stake, rows, [{}, {}, {}], lu, reg, 2, YumaParams(tempo=1), validator_permit=[True, True, False])
    assert plain.incentive[0] == 0 and plain.incentive[2] == U16_MAX
    owner = epoch(stake, rows, [{}, {}, {}], lu, reg, 2, YumaParams(tempo=1, owner_uid=0),
                  validator_permit=[True, True, False])
    assert owner.incentive[0] > 0


def test_weights_are_quantized_and_stored_as_the_chain_does():
    assert quantize_weights({3: 0.5, 1: 0.25, 7: 0.0}) == {1: 32768, 3: 65535}  # round(0.5 · 65535), zero dropped
    assert quantize_weights({}) == {} and quantize_weights({2: 0.0}) == {}
    assert stored_weights({4: 16383, 5: 32767}) == {4: 32766, 5: 65535}  # max-upscaled: 32766.49998 rounded
    assert stored_weights({1: 65535, 2: 1}) == {1: 65535, 2: 1}
    with pytest.raises(ValueError, match="non-negative"):
        quantize_weights({1: -0.1})
    with pytest.raises(ValueError, match="non-negative"):
        quantize_weights({1: float("nan")})


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="tempo"):
        YumaParams(tempo=0)
    with pytest.raises(ValueError, match="kappa"):
        YumaParams(kappa=70000)
    with pytest.raises(ValueError, match="names uid 9"):
        epoch([1, 1], [{9: 1}, {}], [{}, {}], [0, 0], [0, 0], 1)
    with pytest.raises(ValueError, match="not a u16"):
        epoch([1, 1], [{1: 70000}, {}], [{}, {}], [0, 0], [0, 0], 1)
    with pytest.raises(ValueError, match="3 entries for 2 uids"):
        epoch([1, 1], [{}, {}], [{}, {}], [0, 0, 0], [0, 0], 1)
    with pytest.raises(ValueError, match="negative"):
        epoch([1, -1], [{}, {}], [{}, {}], [0, 0], [0, 0], 1)


def test_the_owner_takes_eighteen_percent():
    assert owner_share(1_000_000_000) == 179_995_422  # 11796 / 65535 of it
