"""The Bittensor adapter, offline: the real SDK (bittensor 11) over an in-process substrate."""

import pytest

from gauntlet.chain import open_chain
from gauntlet.chain.bittensor_chain import BittensorChain, raw_field_bytes, split_fields
from gauntlet.errors import ChainError
from gauntlet.identity import Identity
from memory_substrate import MemorySubstrate

NETUID = 3
MINER, VALIDATOR, OUTSIDER = (Identity.from_seed(s) for s in ("miner", "validator", "outsider"))


@pytest.fixture
def substrate():
    sub = MemorySubstrate(netuid=NETUID, block=5000)
    sub.register(MINER.hotkey)
    sub.register(VALIDATOR.hotkey, stake_tao=1000.0, permit=True)
    return sub


@pytest.fixture
def chain(substrate):
    ch = open_chain(f"bittensor://finney/{NETUID}", substrate=substrate, timeout=20)
    yield ch
    ch.close()


def test_block_and_metagraph(chain, substrate):
    assert isinstance(chain, BittensorChain) and chain.block() == 5000
    assert chain.timestamp(4990) == 1_700_000_000 + 12 * 4990  # from Timestamp.Now at that block
    neurons = chain.metagraph()
    assert [(n.uid, n.hotkey, n.stake, n.validator_permit) for n in neurons] == [
        (0, MINER.hotkey, 0.0, False), (1, VALIDATOR.hotkey, 1000.0, True)]


def test_commitments_go_out_as_raw_fields_signed_by_the_hotkey_and_read_back(chain, substrate):
    data = bytes(range(200))
    chain.commit(MINER, data)
    call, signer = substrate.submitted[-1]
    assert (call.module, call.function, signer) == ("Commitments", "set_commitment", MINER.hotkey)
    assert call.params == {"netuid": NETUID, "info": {"fields": [{"Raw128": data[:128]}, {"Raw72": data[128:]}]}}
    got = chain.commitments()
    assert list(got) == [MINER.hotkey] and got[MINER.hotkey].data == data and got[MINER.hotkey].block == 5000


def test_commitment_limits_and_chain_rejections_are_chain_errors(chain, substrate):
    chain.commit(MINER, bytes(384))  # three full fields: the most the chain accepts
    with pytest.raises(ChainError, match="384"):
        chain.commit(MINER, bytes(385))
    with pytest.raises(ChainError, match="AccountNotAllowedCommit"):
        chain.commit(OUTSIDER, b"card")


def test_set_weights_through_the_sdk_intent_and_read_them_back(chain, substrate):
    chain.set_weights(VALIDATOR, {0: 3.0, 1: 1.0})
    call, signer = substrate.submitted[-1]
    assert (call.function, signer) == ("set_mechanism_weights", VALIDATOR.hotkey)
    assert call.params["dests"] == [0, 1] and call.params["weights"] == [65535, 21845]  # max-upscaled u16
    weights = chain.weights()
    assert weights.keys() == {1} and weights[1][0] == pytest.approx(0.75, abs=1e-4)
    with pytest.raises(ChainError, match="NeuronNoValidatorPermit"):
        chain.set_weights(MINER, {1: 1.0})
    with pytest.raises(ChainError, match="not registered"):
        chain.set_weights(OUTSIDER, {0: 1.0})
    with pytest.raises(ChainError, match="zero"):
        chain.set_weights(VALIDATOR, {0: 0.0})
    submitted = len(substrate.submitted)
    with pytest.raises(ChainError, match="uid 0 appears twice"):
        chain.set_weights(VALIDATOR, {0: 1.0, "0": 2.0})
    assert len(substrate.submitted) == submitted  # refused before anything was signed



def test_with_commit_reveal_on_the_sdk_commits_timelocked_weights_that_nobody_can_read(chain, substrate):
    # the same set_weights call: the SDK's SetWeights intent sees CommitRevealWeightsEnabled and
    # sends a drand-timelocked commit instead of the weights
    substrate.commit_reveal = True
    chain.set_weights(VALIDATOR, {0: 3.0, 1: 1.0})
    call, signer = substrate.submitted[-1]
    assert (call.module, call.function, signer) == ("SubtensorModule", "commit_timelocked_mechanism_weights",
                                                     VALIDATOR.hotkey)
    commit = substrate.commits[1]
    assert commit["reveal_round"] > 0 and len(commit["commit"]) > 32
    assert (65535).to_bytes(2, "little") + (21845).to_bytes(2, "little") not in commit["commit"]  # encrypted
    assert chain.weights() == {}  # nothing visible until the chain reveals it

def test_an_unreachable_network_is_a_clear_error_not_a_hang():
    from s3_servers import free_port

    with pytest.raises(ChainError, match="connect"):
        open_chain(f"bittensor://ws://127.0.0.1:{free_port()}/{NETUID}", timeout=15)


def test_field_helpers():
    assert split_fields(b"") == [b""] and [len(f) for f in split_fields(bytes(300))] == [128, 128, 44]
    assert raw_field_bytes([{"Raw2": "0x0102"}, {"Sha256": "0xff"}, "None", {"Raw1": [3]}]) == b"\x01\x02\x03"


def test_the_subnet_owner_hotkey_is_read_from_chain_storage(chain, substrate):
    with pytest.raises(ChainError, match="has no owner hotkey"):
        chain.owner_hotkey()
    substrate.owner = VALIDATOR.hotkey  # SubtensorModule.SubnetOwnerHotkey[netuid]
    assert chain.owner_hotkey() == VALIDATOR.hotkey
