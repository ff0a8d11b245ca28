"""Yuma Consensus: one epoch as the Bittensor chain (subtensor) computes it, in its arithmetic.

Pure functions, no chain I/O. Every quantity is an ``I32F32`` fixed-point number held as a Python
int of its bits (value = bits / 2³²); multiplication floors the 128-bit product's low 32 bits
away, division truncates toward zero and gives 0 when dividing by 0, sums are exact — what the
chain's fixed-point types do — so results match the chain's to the unit. Stake is normalised in
``I64F64`` first, as the chain does.

One epoch (docs/payouts.md explains each step):

1. **stake** below ``stake_threshold`` is zeroed; the rest normalised. A neuron is *active* when it
   set weights within ``activity_cutoff`` blocks; *active stake* keeps the active neurons holding a
   validator permit (the permits of the previous epoch) and is normalised again. New permits go to
   the top ``max_allowed_validators`` non-zero stakes.
2. **weights** (as stored: each row max-upscaled to 65535) lose the rows of neurons without a
   permit, the diagonal (self-weight; the subnet owner's is kept), and every weight set before its
   target last registered; rows are normalised.
3. **consensus** per miner: the stake-weighted median of its column at ``kappa``; weights above it
   are clipped to it. **validator trust** is the sum of a validator's clipped weights; **incentive**
   the normalised clipped ranks.
4. **bonds**: weights moved toward the clipped ones by ``bonds_penalty``; an exponential moving
   average with rate ``1 − bonds_moving_average/10⁶`` (or a per-cell *liquid alpha*), of the
   stake-weighted, column-normalised weights (classic Yuma) or of the weights themselves (Yuma3);
   **dividends** from bonds × incentive (× stake for Yuma3), normalised.
5. **emission**: the epoch's emission split by ``incentive + dividends`` (half to miners, half to
   validators when both are positive); with none, the validators by active stake.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

FRAC = 32
ONE = 1 << FRAC
U16_MAX = 65535
_MAX, _MIN = (1 << 63) - 1, -(1 << 63)
Row = dict[int, int]  # column -> I32F32 bits (a sparse matrix row, columns ascending)


# ------------------------------------------------------------------------------ fixed point

def _sat(x: int) -> int:
    return _MAX if x > _MAX else _MIN if x < _MIN else x


def fx(n: int) -> int:
    """An integer as I32F32."""
    return _sat(n << FRAC)


def mul(a: int, b: int) -> int:
    """``a × b``: the 128-bit product shifted back, rounding toward −∞ (saturating)."""
    return _sat((a * b) >> FRAC)


def _div_trunc(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def div(a: int, b: int) -> int:
    """``a / b`` truncated toward zero; 0 when ``b`` is 0 (the chain's ``safe_div``)."""
    return 0 if b == 0 else _sat(_div_trunc(a << FRAC, b))


def to_int(a: int) -> int:
    """The integer part (toward −∞), as ``saturating_to_num`` gives for a non-negative value."""
    return a >> FRAC


def to_u16(a: int) -> int:
    return max(0, min(U16_MAX, to_int(a)))


def proportion_to_u16(a: int) -> int:
    """A proportion in [0, 1] as the chain stores it: ``floor(a × 65535)``."""
    return to_u16(mul(a, fx(U16_MAX)))


def from_float(x: float) -> int:
    """A float as I32F32, rounded to nearest (ties to even), as ``from_num`` does."""
    return _sat(round(x * ONE))


def to_float(a: int) -> float:
    return a / ONE


def normalize(v: Sequence[int]) -> list[int]:
    total = sum(v)
    return list(v) if total == 0 else [div(x, total) for x in v]


def _normalize_64(stake: Sequence[int]) -> list[int]:
    """Raw stake → I64F64 proportions → I32F32 (the low 32 fractional bits dropped)."""
    total = sum(stake)
    if total == 0:
        return [0 for _ in stake]
    return [_div_trunc(s << 128, total << 64) >> FRAC for s in stake]


# ------------------------------------------------------------------------------ sparse matrices

def _row_normalize(m: list[Row]) -> list[Row]:
    out = []
    for row in m:
        total = sum(row.values())
        out.append({j: div(v, total) for j, v in row.items()} if total > 0 else dict(row))
    return out


def _col_sums(m: Sequence[Row], n: int) -> list[int]:
    sums = [0] * n
    for row in m:
        for j, v in row.items():
            sums[j] += v
    return sums


def _col_normalize(m: Sequence[Row], n: int) -> list[Row]:
    sums = _col_sums(m, n)
    return [{j: (v if sums[j] == 0 else div(v, sums[j])) for j, v in row.items()} for row in m]


def _col_max_upscale(m: Sequence[Row], n: int) -> list[Row]:
    top = [0] * n
    for row in m:
        for j, v in row.items():
            top[j] = max(top[j], v)
    return [{j: (v if top[j] == 0 else div(v, top[j])) for j, v in row.items()} for row in m]


def _matmul(m: Sequence[Row], vector: Sequence[int], n: int) -> list[int]:
    """``r_j = Σ_i vector_i · m_ij``."""
    out = [0] * n
    for i, row in enumerate(m):
        for j, v in row.items():
            out[j] += mul(vector[i], v)
    return out


def _matmul_transpose(m: Sequence[Row], vector: Sequence[int]) -> list[int]:
    """``r_i = Σ_j vector_j · m_ij``."""
    return [sum(mul(vector[j], v) for j, v in row.items()) for row in m]


def _ema(new: Sequence[Row], old: Sequence[Row], alpha: int | Sequence[Sequence[int]], n: int) -> list[Row]:
    """``alpha · new + (1 − alpha) · old`` cell by cell; ``alpha`` one rate, or one per cell (liquid alpha)."""
    out = []
    for i, (new_row, old_row) in enumerate(zip(new, old)):
        rate = (lambda j: alpha) if isinstance(alpha, int) else alpha[i].__getitem__
        row = [0] * n
        for j, v in new_row.items():
            row[j] = mul(rate(j), v)
        for j, v in old_row.items():
            row[j] += mul(fx(1) - rate(j), v)
        out.append({j: v for j, v in enumerate(row) if v > 0})
    return out


def weighted_median(stake: Sequence[int], score: Sequence[int], idx: Sequence[int], minority: int, lo: int,
                    hi: int) -> int:
    """The chain's stake-weighted median: a deterministic mid-pivot partition search over ``idx``."""
    while True:
        if not idx:
            return 0
        if len(idx) == 1:
            return score[idx[0]]
        pivot = score[idx[len(idx) // 2]]
        lower = [i for i in idx if score[i] < pivot]
        upper = [i for i in idx if score[i] > pivot]
        lo_stake, hi_stake = sum(stake[i] for i in lower), sum(stake[i] for i in upper)
        if lo + lo_stake <= minority < hi - hi_stake:
            return pivot
        if minority < lo + lo_stake and lower:
            idx, hi = lower, lo + lo_stake
        elif hi - hi_stake <= minority and upper:
            idx, lo = upper, hi - hi_stake
        else:
            return pivot


def _consensus(active_stake: Sequence[int], weights: Sequence[Row], n: int, kappa: int) -> list[int]:
    """Per column, the weighted median over the neurons with active stake (``kappa``: the majority)."""
    rows = [i for i, s in enumerate(active_stake) if s > 0]
    use_stake = normalize([active_stake[i] for i in rows])
    total = sum(use_stake)
    minority = total - kappa
    everyone = list(range(len(rows)))
    median = []
    for c in range(n):
        scores = [weights[i].get(c, 0) for i in rows]
        median.append(weighted_median(use_stake, scores, everyone, minority, 0, total))
    return median


def _clip(weights: Sequence[Row], consensus: Sequence[int]) -> list[Row]:
    out = []
    for row in weights:
        clipped: Row = {}
        for j, v in row.items():
            if consensus[j] < v:
                if consensus[j] > 0:
                    clipped[j] = consensus[j]
            else:
                clipped[j] = v
        out.append(clipped)
    return out


def _interpolate(a: Sequence[Row], b: Sequence[Row], ratio: int, n: int) -> list[Row]:
    """``a + ratio · (b − a)`` cell by cell (``ratio`` 0 gives ``a``, 1 gives ``b``)."""
    if ratio == 0:
        return [dict(r) for r in a]
    if ratio == fx(1):
        return [dict(r) for r in b]
    out = []
    for ra, rb in zip(a, b):
        row = {}
        for j in range(n):
            v1, v2 = ra.get(j, 0), rb.get(j, 0)
            value = v1 + mul(ratio, v2 - v1)
            if value > 0:
                row[j] = value
        out.append(row)
    return out


# ------------------------------------------------------------------------------ the epoch

@dataclass(frozen=True)
class YumaParams:
    """The subnet hyperparameters an epoch reads (the chain's defaults)."""

    tempo: int = 360
    activity_cutoff: int = 5000
    kappa: int = 32767  # of 65535: the share of active stake whose median sets consensus
    bonds_penalty: int = 65535  # of 65535: bonds follow the clipped weights entirely
    bonds_moving_average: int = 900_000  # of 10⁶: the EMA keeps 90 % of the old bonds
    max_allowed_validators: int = 64
    stake_threshold: int = 0
    yuma3: bool = True
    liquid_alpha: bool = False
    alpha_low: int = 45875  # of 65535 (0.7): liquid alpha's range
    alpha_high: int = 58982  # of 65535 (0.9)
    alpha_sigmoid_steepness: float = 1000.0
    owner_uid: int | None = None  # the subnet owner keeps its self-weight

    def __post_init__(self) -> None:
        proportions = {"kappa": self.kappa, "bonds_penalty": self.bonds_penalty, "alpha_low": self.alpha_low,
                       "alpha_high": self.alpha_high}
        for name, value in proportions.items():
            if not 0 <= value <= U16_MAX:
                raise ValueError(f"{name} must be a u16 proportion (0..65535), got {value}")
        if self.tempo < 1:
            raise ValueError(f"tempo must be at least 1 block, got {self.tempo}")
        if not 0 <= self.bonds_moving_average <= 1_000_000:
            raise ValueError("bonds_moving_average is a share of 10^6")
        if self.max_allowed_validators < 0 or self.activity_cutoff < 0 or self.stake_threshold < 0:
            raise ValueError("max_allowed_validators, activity_cutoff and stake_threshold cannot be negative")


@dataclass(frozen=True)
class EpochResult:
    """What an epoch stores (u16 proportions, as on chain) and pays (in the emission's unit)."""

    active: list[bool]
    stake: list[int]  # u16 proportions of the (thresholded) stake
    validator_permit: list[bool]  # the new permits (they act from the next epoch)
    consensus: list[int]
    incentive: list[int]
    dividends: list[int]
    validator_trust: list[int]
    trust: list[int]
    rank: list[int]
    bonds: list[dict[int, int]]  # u16, as stored for the next epoch
    server_emission: list[int]  # to each uid as a miner (incentive)
    validator_emission: list[int]  # to each uid as a validator (dividends)
    emission: list[int]  # the combined emission, as the chain records it
    fixed: dict[str, list[int]] = field(default_factory=dict, repr=False)  # I32F32 intermediates, for tests


def _check(n: int, stake, weights, bonds, last_update, registered_at, permits) -> None:
    for name, v in (("stake", stake), ("weights", weights), ("bonds", bonds), ("last_update", last_update),
                    ("registered_at", registered_at), ("validator_permit", permits)):
        if len(v) != n:
            raise ValueError(f"{name} has {len(v)} entries for {n} uids")
    if any(s < 0 for s in stake):
        raise ValueError("stake cannot be negative")
    for name, matrix in (("weights", weights), ("bonds", bonds)):
        for i, row in enumerate(matrix):
            for j, v in row.items():
                if not 0 <= j < n:
                    raise ValueError(f"{name}[{i}] names uid {j}, not one of the {n} uids")
                if not 0 <= v <= U16_MAX:
                    raise ValueError(f"{name}[{i}][{j}] = {v} is not a u16")


def epoch(stake: Sequence[int], weights: Sequence[Mapping[int, int]], bonds: Sequence[Mapping[int, int]],
          last_update: Sequence[int], registered_at: Sequence[int], block: int, params: YumaParams = YumaParams(),
          *, validator_permit: Sequence[bool] | None = None, emission: int = 1_000_000_000,
          commit_blocks: Sequence[int | None] | None = None) -> EpochResult:
    """One epoch over ``n`` uids at ``block``.

    ``stake``: each uid's stake (integers, the chain's smallest unit); ``weights``: per uid, the u16
    weights it set (``{uid: weight}``, as stored); ``bonds``: per uid, the u16 bonds the last epoch
    stored; ``last_update``: the block each uid last set weights; ``registered_at``: the block each
    uid last registered; ``validator_permit``: the permits the previous epoch stored (default: those
    this stake earns); ``emission``: what the epoch distributes; ``commit_blocks``: with commit-reveal,
    the block of each uid's oldest pending commit (None: none) — its weights on miners registered
    after that block are dropped."""
    n = len(stake)
    permits = list(validator_permit) if validator_permit is not None else None
    stake_fx = _normalize_64([0 if s < params.stake_threshold else s for s in stake])
    new_permits = _top_k_nonzero(stake_fx, params.max_allowed_validators)
    permits = new_permits if permits is None else permits
    _check(n, stake, weights, bonds, last_update, registered_at, permits)
    active = [last_update[i] + params.activity_cutoff >= block for i in range(n)]
    active_stake = normalize([s if active[i] and permits[i] else 0 for i, s in enumerate(stake_fx)])

    w = _weights(weights, permits, last_update, registered_at, params.owner_uid, commit_blocks)
    preranks = _matmul(w, active_stake, n)
    consensus = _consensus(active_stake, w, n, div(fx(params.kappa), fx(U16_MAX)))
    clipped = _clip(w, consensus)
    validator_trust = [sum(row.values()) for row in clipped]
    ranks = _matmul(clipped, active_stake, n)
    trust = [div(r, p) if p != 0 else 0 for r, p in zip(ranks, preranks)]
    incentive = normalize(ranks)

    for_bonds = _interpolate(w, clipped, div(fx(params.bonds_penalty), fx(U16_MAX)), n)
    last_tempo = max(0, block - params.tempo)
    fresh = {j for j in range(n) if last_tempo <= registered_at[j]}  # registered since the last epoch
    if params.yuma3:
        old = [{j: div(fx(b), fx(U16_MAX)) for j, b in row.items() if j not in fresh} for row in bonds]
        ema = _bonds_yuma3(for_bonds, old, consensus, params, n)
        per_validator = [sum(mul(v, incentive[j]) for j, v in row.items()) for row in _col_normalize(ema, n)]
        dividends = normalize([_checked_mul(t, s) for t, s in zip(per_validator, active_stake)])
        stored = ema
    else:
        old = _col_normalize([{j: fx(b) for j, b in row.items() if j not in fresh} for row in bonds], n)
        delta = _col_normalize([{j: mul(v, active_stake[i]) for j, v in row.items()} for i, row in enumerate(for_bonds)], n)
        ema = _col_normalize(_ema(delta, old, _bonds_alpha(params), n), n)
        dividends = normalize(_matmul_transpose(ema, incentive))
        stored = _col_max_upscale(ema, n)
    server, validator, combined = _emission(incentive, dividends, active_stake, stake_fx, emission)
    new_bonds = [({j: proportion_to_u16(v) for j, v in stored[i].items()} if new_permits[i]
                  else {} if permits[i] else dict(bonds[i])) for i in range(n)]
    u16 = lambda v: [proportion_to_u16(x) for x in v]  # noqa: E731
    return EpochResult(active, u16(stake_fx), new_permits, u16(consensus), u16(incentive), u16(dividends),
                       u16(validator_trust), u16(trust), u16(incentive), new_bonds, server, validator, combined,
                       fixed={"stake": stake_fx, "active_stake": active_stake, "consensus": consensus,
                              "incentive": incentive, "dividends": dividends})


def _top_k_nonzero(stake: Sequence[int], k: int) -> list[bool]:
    """Permits: the ``k`` largest non-zero stakes (ties: the lower uid loses first, a stable sort)."""
    result = [s != 0 for s in stake]
    if len(stake) < k:
        return result
    for i in sorted(range(len(stake)), key=lambda i: stake[i])[: len(stake) - k]:
        result[i] = False
    return result


def _weights(weights, permits, last_update, registered_at, owner_uid, commit_blocks) -> list[Row]:
    """Stored weights as I32F32, masked (permit, diagonal, outdated, commits) and row-normalised."""
    out = []
    for i, row in enumerate(weights):
        kept: Row = {}
        if permits[i]:
            for j in sorted(row):
                if j == i and i != owner_uid:
                    continue
                if last_update[i] <= registered_at[j]:
                    continue  # set before the miner last registered
                if commit_blocks is not None and commit_blocks[i] is not None and commit_blocks[i] < registered_at[j]:
                    continue
                kept[j] = fx(row[j])
        out.append(kept)
    return _row_normalize(out)


def _bonds_alpha(params: YumaParams) -> int:
    """``1 − bonds_moving_average / 10⁶`` (the average computed in I64F64, then truncated to I32F32)."""
    average = _div_trunc(params.bonds_moving_average << 128, 1_000_000 << 64) >> FRAC
    return fx(1) - average


def _bonds_yuma3(for_bonds: list[Row], old: list[Row], consensus: list[int], params: YumaParams, n: int) -> list[Row]:
    if params.liquid_alpha and any(c != 0 for c in consensus):
        low, high = div(fx(params.alpha_low), fx(U16_MAX)), div(fx(params.alpha_high), fx(U16_MAX))
        alphas = [[_alpha_sigmoid(consensus[j], w_row.get(j, 0), b_row.get(j, 0), low, high,
                                  params.alpha_sigmoid_steepness) for j in range(n)]
                  for w_row, b_row in zip(for_bonds, old)]
        return _ema(for_bonds, old, alphas, n)
    return _ema(for_bonds, old, _bonds_alpha(params), n)


def _alpha_sigmoid(consensus: int, weight: int, bond: int, low: int, high: int, steepness: float) -> int:
    """Liquid alpha for one cell: fast when a validator moves its weight away from consensus (buying)
    or below its bond (selling), slow otherwise. The exponential is evaluated in floating point (the
    chain uses a fixed-point series; the two agree to about 10⁻⁹)."""
    buy = min(max(weight - consensus, 0), fx(1))
    sell = min(max(bond - weight, 0), fx(1))
    diff = buy if weight >= bond else sell
    exponent = -steepness / 100.0 * (to_float(diff) - 0.5)
    sigmoid = from_float(1.0 / (1.0 + math.exp(exponent)))
    alpha = low + mul(sigmoid, high - low)
    return min(max(alpha, low), high)


def _checked_mul(a: int, b: int) -> int:
    product = (a * b) >> FRAC
    return 0 if product > _MAX or product < _MIN else product


def _emission(incentive: list[int], dividends: list[int], active_stake: list[int], stake: list[int],
              total: int) -> tuple[list[int], list[int], list[int]]:
    combined = [i + d for i, d in zip(incentive, dividends)]
    emission_sum = sum(combined)
    if emission_sum == 0:
        server = [0] * len(incentive)
        validator = list(stake) if sum(active_stake) == 0 else list(active_stake)
        combined_norm = list(validator)
    else:
        server = [div(i, emission_sum) for i in incentive]
        validator = [div(d, emission_sum) for d in dividends]
        combined_norm = normalize(combined)
    pay = lambda v: [max(0, (x * total) >> FRAC) for x in v]  # noqa: E731  (I96F32 × emission, floored)
    return pay(server), pay(validator), pay(combined_norm)


# ------------------------------------------------------------------------------ weights as set

def quantize_weights(weights: Mapping[int, float]) -> dict[int, int]:
    """Weights as a validator sends them: each ``round(w / max × 65535)``, zeros dropped (what the
    SDK does before ``set_weights``)."""
    if any(not math.isfinite(w) or w < 0 for w in weights.values()):
        raise ValueError("weights must be finite and non-negative")
    top = max(weights.values(), default=0.0)
    if top == 0:
        return {}
    out = {int(uid): round(w / top * U16_MAX) for uid, w in sorted(weights.items())}
    return {uid: v for uid, v in out.items() if v != 0}


def stored_weights(sent: Mapping[int, int]) -> dict[int, int]:
    """A row of u16 weights as the chain stores it: max-upscaled to 65535, rounded half away from
    zero (subtensor's ``vec_u16_max_upscale_to_u16``)."""
    values = [fx(v) for v in sent.values()]
    top = max(values, default=0)
    if top == 0:
        return dict(sent)
    if top > fx(32768):
        scaled = [mul(v, div(fx(U16_MAX), top)) for v in values]
    else:
        scaled = [div(mul(v, fx(U16_MAX)), top) for v in values]
    return {uid: min(U16_MAX, _round_half_away(v)) for uid, v in zip(sent, scaled)}


def _round_half_away(a: int) -> int:
    return (a + ONE // 2) >> FRAC  # non-negative values only


def owner_share(emission: int, owner_cut: int = 11_796) -> int:
    """The subnet owner's cut of a tempo's emission (``owner_cut`` of 65535; 11796 ≈ 18 %)."""
    return (emission * owner_cut) // U16_MAX
