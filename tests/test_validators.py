"""Many validators: what each built-in behaviour sets, how specs parse, and a network whose leader
stops mid-run (the peers follow the next validator by stake, on one fingerprint, adversaries out)."""

import json
import random

import pytest

from gauntlet.config import load_config
from gauntlet.data import prepare
from peers.behaviours import Behaviour, FreeRider, Noise
from peers.sim.lockstep import build, node_identity, run
from peers.sim.scenario import parse_validators
from peers.validator_behaviours import (BUILT_IN, Colluder, Crash, Lazy, ValidatorBehaviour, WeightCopier,
                                        WeightsContext, load_validator_behaviour)


def context(chain_weights=None, stakes=None):
    return WeightsContext(window=3, hotkey="me", uid=0, uids={"me": 0, "a": 1, "b": 2, "friend": 3},
                          peers=[1, 2, 3], stakes=stakes or {0: 10.0, 4: 30.0, 5: 10.0},
                          chain_weights=lambda: chain_weights or {}, rng=random.Random(0))


def test_the_honest_validator_sets_what_its_scores_propose():
    assert ValidatorBehaviour().weights(context(), {1: 0.7, 2: 0.3}) == {1: 0.7, 2: 0.3}


def test_a_weight_copier_sets_the_stake_weighted_mean_of_the_others_rows():
    rows = {0: {3: 1.0}, 4: {1: 3.0, 2: 1.0}, 5: {2: 2.0}}  # its own row (uid 0) is left out
    got = WeightCopier().weights(context(rows), None)
    assert got == pytest.approx({1: 30 * 0.75, 2: 30 * 0.25 + 10 * 1.0})
    assert WeightCopier().weights(context({0: {1: 1.0}}), None) is None  # nothing to copy yet


def test_a_colluder_gives_half_its_weight_to_its_friend():
    colluder = Colluder()
    colluder.target = "friend"
    assert colluder.weights(context(), {1: 3.0, 2: 1.0}) == pytest.approx({1: 0.375, 2: 0.125, 3: 0.5})
    assert colluder.weights(context(), None) == {3: 1.0}
    colluder.target = "not registered"
    assert colluder.weights(context(), {1: 1.0}) == {1: 1.0}


def test_a_lazy_validator_spreads_its_weight_over_every_peer_with_a_card():
    assert Lazy().weights(context(), None) == {1: 1.0, 2: 1.0, 3: 1.0}
    assert not Lazy.evaluates and not WeightCopier.evaluates and Colluder.evaluates


def test_a_crashing_validator_stops_mid_run_unless_told_when():
    assert Crash().stops_after(19) == 9
    crash = Crash()
    crash.stop_window = 4
    assert crash.stops_after(19) == 4 and ValidatorBehaviour().stops_after(19) is None


def test_validator_behaviours_load_by_name_or_module_path():
    assert set(BUILT_IN) == {"honest", "weight-copier", "colluder", "lazy", "crash"}
    assert isinstance(load_validator_behaviour("peers.validator_behaviours:Lazy"), Lazy)
    for bad, why in [("greedy", "unknown validator behaviour"), ("no.such.module:X", "cannot load"),
                     ("peers.behaviours:Behaviour", "not a subclass")]:
        with pytest.raises(ValueError, match=why):
            load_validator_behaviour(bad)


def test_validator_specs_name_each_like_peers_and_share_the_stake():
    specs = parse_validators(["honest@40", "honest@30", "honest@20", "colluder@10", "weight-copier@10"])
    assert [(v.name, v.node, v.behaviour) for v in specs] == [
        ("honest-0", "validator-honest-0", "honest"), ("honest-1", "validator-honest-1", "honest"),
        ("honest-2", "validator-honest-2", "honest"), ("colluder", "validator-colluder", "colluder"),
        ("weight-copier", "validator-weight-copier", "weight-copier")]
    assert [round(v.stake, 6) for v in specs] == [363.636364, 272.727273, 181.818182, 90.909091, 90.909091]
    (alone,) = parse_validators(["honest"])
    assert (alone.name, alone.node, alone.stake) == ("honest-0", "validator", 1000.0)
    assert [v.name for v in parse_validators(["lazy", "lazy", "honest"])] == ["lazy", "lazy-2", "honest-0"]


@pytest.mark.parametrize("specs, why", [
    (["honest@forty"], "must be a number"), (["honest@-5"], "0 or more"), (["@5"], "SPEC@STAKE"),
    (["honest@0", "lazy@0"], "add up to 0"), ([], "at least one validator"), (["honest@inf"], "0 or more")])
def test_bad_validator_specs_are_refused_with_the_reason(specs, why):
    with pytest.raises(ValueError, match=why):
        parse_validators(specs)


SETTINGS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2", "inner.lr=3e-3",
            "timing.blocks_per_window=10", "timing.upload_slot_s=20", "model.device=cpu", "train.eval_batches=1",
            "validator.checkpoint_every=5", "validator.weights_every=1", "validator.list_min_ma=0.15"]


@pytest.mark.slow
def test_when_the_leader_stops_every_node_follows_the_next_validator_by_stake(tmp_path):
    cfg = load_config(overrides=SETTINGS)
    data_dir = tmp_path / "data"
    prepare(cfg.data, data_dir)
    leader = Crash()
    leader.stop_window = 3  # evaluates windows 0-3; its list for window 4 is its last
    validators = [("validator-a", leader, 600.0), ("validator-b", ValidatorBehaviour(), 400.0),
                  ("validator-lazy", Lazy(), 100.0)]
    peers = {"honest-0": Behaviour(), "honest-1": Behaviour(), "honest-2": Behaviour(), "noise": Noise(),
             "free-rider": FreeRider()}
    net = build(tmp_path / "net", cfg, peers, data_dir, validators=validators, tempo=10)
    records = run(net, 8)
    a, b = (node_identity(cfg.seed, n).hotkey for n in ("validator-a", "validator-b"))
    lines = {n: {m["window"]: m for m in map(json.loads, (tmp_path / f"net/peers/{n}/state/metrics.jsonl").open())
                 if "window" in m and "event" not in m} for n in ("honest-0", "honest-1")}
    for w in range(1, 8):
        followed = {line[w]["list_validator"] for line in (lines["honest-0"], lines["honest-1"])}
        assert followed == ({a} if w <= 4 else {b}), (w, followed)
        assert {line[w]["list_failover"] for line in lines.values()} == {w > 4}
        # one fingerprint: the peers, and the validator that evaluated the window (b, from window 4 on)
        assert {line[w]["fingerprint"] for line in lines.values()} == {records[w]["fingerprint"]}
        assert records[w]["followed"]["validator"] == followed.pop()
    b_records = [json.loads(line) for line in (tmp_path / "net/validator-b/state/scores.jsonl").open()]
    assert b_records  # b evaluated every window, before and after
    # once a list names peers, no adversary's message is aggregated — before the failover and after it
    adversaries = {node_identity(cfg.seed, n).hotkey for n in ("noise", "free-rider")}
    listed = [w for w in range(8) if lines["honest-0"][w]["list"] != "open"]
    assert listed and listed[0] <= 4 and listed == list(range(listed[0], 8)), listed
    assert not adversaries & {h for w in listed for line in lines.values() for h in line[w]["gathered"]}
    assert net.validator.identity.hotkey == b  # the leader now
    # each peer reports where it stands: its final score in the followed validator's previous record,
    # its incentive and emission at the chain's last epoch
    payouts = {p.hotkey: p for p in net.chain.payouts()}
    for name, by_window in lines.items():
        hotkey = node_identity(cfg.seed, name).hotkey
        assert all(by_window[w]["score"] == records[w - 1]["peers"][hotkey]["final"] for w in range(1, 8))
        assert (by_window[7]["incentive"], by_window[7]["emission"]) == (payouts[hotkey].incentive,
                                                                          payouts[hotkey].emission)
        assert by_window[7]["incentive"] > 0
    # the lazy validator published nothing (no card): nobody ever tried to follow it
    lazy = node_identity(cfg.seed, "validator-lazy").hotkey
    assert lazy not in net.chain.commitments() and net.chain.weights()


def test_gauntlet_validate_refuses_an_unknown_behaviour_or_a_friend_without_a_colluder(capsys, tmp_path):
    from peers.cli import main

    store = ["--storage", f"file://{tmp_path}/bucket"]
    assert main(["validate", *store, "--behaviour", "bribed"]) == 1
    assert "unknown validator behaviour 'bribed'" in capsys.readouterr().err
    assert main(["validate", *store, "--collude-with", "5Fakehotkey"]) == 1
    assert "--collude-with needs --behaviour colluder" in capsys.readouterr().err
