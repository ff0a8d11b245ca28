"""A validator's gather keeps valid messages on disk and decodes one peer at a time: same results."""

import pytest
import torch

from gauntlet.chain.local import LocalChain
from gauntlet.config import load_config
from gauntlet.errors import InvalidMessage
from gauntlet.identity import Identity
from gauntlet.models import build_model
from gauntlet.sparseloco import ErrorFeedback, decode_message, encode_message
from gauntlet.storage import FileStore, keys
from gauntlet.uniqueness.sampled import draw_sample
from peers.node.engine import ModelEngine
from peers.network.gather import gather
from peers.network.spool import Spool, SpooledMessage, read_message_sample

SETTINGS = ["model.device=cpu", "data.seq_len=32"]
PEERS = [Identity.from_seed(f"spool-{i}") for i in range(3)]


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(overrides=SETTINGS)
    model = build_model(cfg.model, 256, cfg.data.seq_len, seed=cfg.seed)
    spec = {n: tuple(p.shape) for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    raws = [encode_message(ErrorFeedback(spec, cfg.sparseloco).compress(
        {n: torch.randn(s, generator=g) * 1e-3 for n, s in spec.items()}), window=4, run="run", codec=cfg.sparseloco,
        signer=p) for p in PEERS]
    return cfg, spec, raws


def engine(cfg):
    return ModelEngine(cfg, build_model(cfg.model, 256, cfg.data.seq_len, seed=cfg.seed), train=False)


def test_spooled_messages_decode_score_and_aggregate_exactly_like_messages_in_memory(tmp_path, setup):
    cfg, spec, raws = setup
    messages = [decode_message(r, spec=spec) for r in raws]
    spool = Spool(tmp_path, spec, cfg.sparseloco)
    spooled = [spool.put(m) for m in messages]
    assert all(isinstance(s, SpooledMessage) and s.path.read_bytes() == r for s, r in zip(spooled, raws))
    first = spooled[0].tensors
    assert all(torch.equal(first[n].to_dense(), messages[0].tensors[n].to_dense()) for n in spec)
    own, rand = [torch.randint(0, 256, (2, 32))], [torch.randint(0, 256, (2, 32))]
    a, b = engine(cfg), engine(cfg)
    before = a.measure.mean_loss(rand)
    assert a.measure.test_update(messages[1], 0.2, own, rand, before) == \
        b.measure.test_update(spooled[1], 0.2, own, rand, before)
    agg_a, agg_b = a.updates.apply(messages, want_full=True), b.updates.apply(spooled, want_full=True)
    assert all(torch.equal(agg_a[n], agg_b[n]) for n in spec)
    assert a.measure.fingerprint() == b.measure.fingerprint()
    sample = draw_sample(spec, cfg.sparseloco, 64, seed=5)
    for m, s in zip(messages, spooled):
        (k1, v1), (k2, v2) = read_message_sample(m, sample), read_message_sample(s, sample)
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_a_spooled_file_that_changed_on_disk_is_refused(tmp_path, setup):
    cfg, spec, raws = setup
    spooled = Spool(tmp_path, spec, cfg.sparseloco).put(decode_message(raws[0], spec=spec))
    data = bytearray(spooled.path.read_bytes())
    data[-1] ^= 0x01
    spooled.path.write_bytes(bytes(data))
    with pytest.raises(InvalidMessage, match="sha256"):
        _ = spooled.tensors


def test_gather_with_a_spool_keeps_only_headers_in_memory_and_spool_folders_are_pruned(tmp_path, setup):
    cfg, spec, raws = setup
    chain = LocalChain(tmp_path / "chain.db", clock="manual")
    sources = {}
    for p, raw in zip(PEERS, raws):
        chain.register(p.hotkey)
        sources[p.hotkey] = FileStore(tmp_path / p.hotkey[:8])
        sources[p.hotkey].put(keys.message("run", 4, p.hotkey), raw)
    spool = Spool(tmp_path / "spool", spec, cfg.sparseloco)
    (tmp_path / "spool" / "3").mkdir(parents=True)  # left by an interrupted earlier window
    result = gather(4, sources, run="run", run_hash="run", registered={p.hotkey for p in PEERS}, spec=spec,
                    codec=cfg.sparseloco, slot=None, max_bytes=1 << 24, timeout=60, spool=spool)
    assert sorted(result.messages) == sorted(p.hotkey for p in PEERS)
    assert all(isinstance(m, SpooledMessage) and m.path.parent == tmp_path / "spool" / "4"
               for m in result.messages.values())
    spool.keep_only(4)
    assert sorted(c.name for c in (tmp_path / "spool").iterdir()) == ["4"]
    spool.keep_only(None)
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_message_with_other_shapes_is_rejected_before_it_is_spooled_or_sampled(tmp_path, setup):
    cfg, spec, raws = setup
    other = {n: (s[0] + 1, *s[1:]) if n.endswith("lm_head.weight") else s for n, s in spec.items()}
    wrong = encode_message(ErrorFeedback(other, cfg.sparseloco).compress({n: torch.randn(s) for n, s in other.items()}),
                           window=4, run="run", codec=cfg.sparseloco, signer=PEERS[0])
    chain_store = FileStore(tmp_path / "p0")
    chain_store.put(keys.message("run", 4, PEERS[0].hotkey), wrong)
    spool = Spool(tmp_path / "spool", spec, cfg.sparseloco)
    result = gather(4, {PEERS[0].hotkey: chain_store}, run="run", run_hash="run", registered={PEERS[0].hotkey},
                    spec=spec, codec=cfg.sparseloco, slot=None, max_bytes=1 << 24, timeout=60, spool=spool)
    assert not result.messages and "shape" in result.invalid[PEERS[0].hotkey]
    assert not (tmp_path / "spool" / "4").exists() or not any((tmp_path / "spool" / "4").iterdir())
