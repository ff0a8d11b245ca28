"""The chains pay: the embedded chain runs Yuma Consensus every tempo and keeps what each uid
earned; the Bittensor adapter reads the same from the metagraph."""

import pytest

from gauntlet.chain import open_chain
from gauntlet.chain.local import RAO, LocalChain
from gauntlet.chain.yuma import owner_share
from gauntlet.errors import ChainError, ConfigError
from gauntlet.identity import Identity

VALIDATOR, OTHER, P1, P2 = (Identity.from_seed(s) for s in ("validator", "validator-2", "peer-1", "peer-2"))


def subnet(tmp_path, **options):
    chain = LocalChain(tmp_path / "chain.db", clock="manual", tempo=10, **options)
    uids = [chain.register(VALIDATOR.hotkey, stake=1000.0, validator_permit=True), chain.register(P1.hotkey),
            chain.register(P2.hotkey)]
    return chain, uids


def test_an_epoch_every_tempo_pays_miners_by_incentive_and_the_validator_by_dividends(tmp_path):
    chain, (v, p1, p2) = subnet(tmp_path)
    chain.advance(1)
    chain.set_weights(VALIDATOR, {p1: 3.0, p2: 1.0})
    chain.advance(8)
    assert chain.epochs() == [] and all(p.balance == 0 for p in chain.payouts())  # block 9: not yet
    chain.advance(1)  # block 10: the epoch
    pay = {p.uid: p for p in chain.payouts()}
    assert pay[p1].incentive == pytest.approx(0.75, abs=1e-4) and pay[p2].incentive == pytest.approx(0.25, abs=1e-4)
    assert pay[v].dividends == pytest.approx(1.0, abs=1e-4) and pay[v].incentive == 0
    minted = 10 * RAO - owner_share(10 * RAO)  # the owner takes 11796/65535 of the tempo's emission
    assert chain.owner_earned() == owner_share(10 * RAO)
    assert pay[v].emission == pytest.approx(minted / 2, abs=10)  # half to validators, half to miners
    assert pay[p1].emission == pytest.approx(0.75 * minted / 2, rel=1e-4)
    assert minted - 10 <= sum(p.emission for p in pay.values()) <= minted
    chain.advance(20)  # two more epochs, same weights: balances accumulate
    again = {p.uid: p for p in chain.payouts()}
    assert len(chain.epochs()) == 3 and again[p1].balance == pytest.approx(3 * pay[p1].emission, rel=1e-3)


def test_every_process_sees_the_same_epochs_whoever_runs_them(tmp_path):
    chain, (v, p1, p2) = subnet(tmp_path)
    chain.advance(1)
    chain.set_weights(VALIDATOR, {p1: 1.0, p2: 1.0})
    chain.advance(29)
    reader = LocalChain(tmp_path / "chain.db")  # a second handle on the file: runs the due epochs itself
    assert reader.tempo == 10 and [e["block"] for e in reader.epochs()] == [10, 20, 30]
    assert reader.payouts() == chain.payouts()


def test_with_commit_reveal_weights_count_and_show_one_epoch_later(tmp_path):
    chain, (v, p1, p2) = subnet(tmp_path, commit_reveal=True)
    chain.advance(1)
    chain.set_weights(VALIDATOR, {p1: 1.0})  # committed in the interval ending at block 10
    assert chain.weights() == {}  # nobody can copy them yet
    chain.advance(9)  # block 10: the epoch runs without them
    assert chain.payouts()[p1].incentive == 0 and chain.weights() == {}
    chain.advance(1)  # block 11: revealed
    assert chain.weights() == {v: {p1: 1.0}}
    chain.advance(9)  # block 20: revealed weights pay
    assert chain.payouts()[p1].incentive == pytest.approx(1.0)


def test_a_second_validator_that_overweights_a_peer_is_clipped_to_consensus(tmp_path):
    chain, (v, p1, p2) = subnet(tmp_path)
    v2 = chain.register(OTHER.hotkey, stake=400.0, validator_permit=True)
    chain.advance(1)
    chain.set_weights(VALIDATOR, {p1: 1.0, p2: 1.0})
    chain.set_weights(OTHER, {p2: 1.0})  # the minority gives everything to p2
    chain.advance(9)
    pay = {p.uid: p for p in chain.payouts()}
    # consensus (the median of 1000 vs 400 stake) gives p2 0.5: the minority's extra 0.5 is clipped,
    # so p2 earns (5/7·0.5 + 2/7·0.5) against p1's 5/7·0.5 — 7/12, not the unclipped 9/14
    assert pay[p2].incentive == pytest.approx(7 / 12, abs=1e-3) and pay[p1].incentive == pytest.approx(5 / 12, abs=1e-3)
    trust = chain.epochs()[-1]["validator_trust"]
    assert trust[v] == 65535 and trust[v2] == pytest.approx(32767, abs=2)  # half of its weight survived
    assert pay[v].dividends > pay[v2].dividends


def test_bad_settings_and_weights_are_refused(tmp_path):
    with pytest.raises(ChainError, match="tempo"):
        LocalChain(tmp_path / "zero.db", tempo=0)
    with pytest.raises(ConfigError, match="unknown option"):
        open_chain(f"local://{tmp_path}/x.db?tempoo=3")
    chain, (v, p1, p2) = subnet(tmp_path)
    with pytest.raises(ChainError, match="not registered"):
        chain.set_weights(VALIDATOR, {p1: 1.0, 42: 1.0})
    with pytest.raises(ChainError, match="finite and >= 0"):
        chain.set_weights(VALIDATOR, {p1: 1.0, p2: -1.0})
    with pytest.raises(ChainError, match=f"uid {p1} appears twice"):
        chain.set_weights(VALIDATOR, {p1: 1.0, str(p1): 0.5})
    with pytest.raises(ChainError, match="not a uid"):
        chain.set_weights(VALIDATOR, {"p1": 1.0})
    with pytest.raises(ChainError, match="tempo"):
        open_chain(f"local://{tmp_path}/t.db?tempo=0")
    with pytest.raises(ChainError, match="all weights are zero"):
        chain.set_weights(VALIDATOR, {p1: 0.0})
    assert open_chain(f"local://{tmp_path}/y.db?tempo=7&commit_reveal=1&clock=manual").tempo == 7


def test_the_bittensor_adapter_reads_payouts_from_the_metagraph():
    from memory_substrate import MemorySubstrate

    sub = MemorySubstrate(netuid=3, block=5000)
    sub.register(P1.hotkey)
    sub.register(VALIDATOR.hotkey, stake_tao=1000.0, permit=True)
    sub.neurons[0].update(incentive=65535, emission=410_000_000)
    sub.neurons[1].update(dividends=65535, emission=410_000_000)
    chain = open_chain("bittensor://finney/3", substrate=sub, timeout=20)
    try:
        miner, validator = chain.payouts()
        assert (miner.incentive, miner.dividends, miner.emission) == (1.0, 0.0, 410_000_000)
        assert (validator.dividends, validator.balance) == (1.0, 1000 * RAO)
    finally:
        chain.close()
