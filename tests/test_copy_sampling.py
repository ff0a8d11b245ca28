"""Copy detection on a secret sample of chunks, read straight from the encoded messages."""

import pytest
import torch
from scipy import stats as sps

from gauntlet.config import SparseLoCoConfig, ValidatorConfig
from gauntlet.errors import InvalidMessage
from gauntlet.identity import Identity
from gauntlet.sparseloco import ErrorFeedback, decode_message, encode_message
from gauntlet.sparseloco.chunking import make_layout
from gauntlet.uniqueness import copy_stats, find_copies
from gauntlet.uniqueness.copying import pair_stats
from gauntlet.uniqueness.sampled import (
    chunks_needed,
    draw_sample,
    misclassification_bound,
    read_sample,
    sample_seed,
)
from peers.network.spool import data_start

# 12-bit and 16-bit indices, uneven tiles, a sparse 1-D tensor and a dense one
SHAPES = {"a.weight": (200, 300), "b.weight": (4096, 17), "c.weight": (5000,), "d.bias": (30,),
          "e.weight": (256, 512)}
PEERS = [Identity.from_seed(f"peer-{i}") for i in range(6)]


def encode(delta, cfg, signer, window=3):
    return encode_message(ErrorFeedback(SHAPES, cfg).compress(delta), window=window, run="r", codec=cfg,
                          signer=signer)


def sampled_stats(messages, cfg, chunks, seed=7):
    sample = draw_sample(dict(reversed(SHAPES.items())), cfg, chunks, seed)  # a model lists tensors in any order
    pairs = [read_sample(m, data_start(m), sample) for m in messages]
    return pair_stats(torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])), sample


CODECS = [SparseLoCoConfig(), SparseLoCoConfig(quant_bits=4, sparse_1d=True), SparseLoCoConfig(quant_bits=8),
          SparseLoCoConfig(chunk_size=128, topk=256)]  # the last one mixes 12- and 16-bit indices


@pytest.mark.parametrize("cfg", CODECS, ids=["2-bit", "4-bit+1-D", "8-bit", "16-bit-index"])
def test_reading_every_chunk_from_the_bytes_equals_the_full_comparison(cfg):
    g = torch.Generator().manual_seed(cfg.quant_bits)
    deltas = [{n: torch.randn(s, generator=g) for n, s in SHAPES.items()} for _ in range(4)]
    deltas.append({n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in deltas[0].items()})
    messages = [encode(d, cfg, PEERS[i]) for i, d in enumerate(deltas)]
    full = copy_stats([decode_message(m).tensors for m in messages])
    got, sample = sampled_stats(messages, cfg, chunks=0)
    layouts = [make_layout(s, cfg) for s in SHAPES.values()]
    assert sample.chunks == sample.total_chunks == sum(lay.num_chunks for lay in layouts if lay.sparse)
    assert torch.equal(got.overlap, full.overlap) and torch.equal(got.cosine, full.cosine)
    assert got.overlap[0, 4] > 0.5  # the near-copy is visible


def test_the_shapes_give_112_chunks_and_the_last_codec_mixes_12_and_16_bit_indices():
    assert draw_sample(SHAPES, CODECS[0], 0, 1).total_chunks == 4 * 4 + 64 * 1 + 4 * 8
    assert {make_layout(s, CODECS[-1]).index_bits for s in SHAPES.values() if make_layout(s, CODECS[-1]).sparse} \
        == {12, 16}


def test_the_sample_is_drawn_from_the_validators_secret_and_the_window():
    cfg = SparseLoCoConfig()
    seeds = {sample_seed(b"secret-a", 5), sample_seed(b"secret-a", 6), sample_seed(b"secret-b", 5)}
    assert len(seeds) == 3 and sample_seed(b"secret-a", 5) == sample_seed(b"secret-a", 5)
    draws = [draw_sample(SHAPES, cfg, 32, s).key_base for s in sorted(seeds)]
    assert draws[0].numel() > 0 and not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    again = draw_sample(SHAPES, cfg, 32, sample_seed(b"secret-a", 5))
    assert again.chunks == 32 and torch.equal(again.key_base, draw_sample(SHAPES, cfg, 32,
                                                                             sample_seed(b"secret-a", 5)).key_base)


def test_sampled_detection_catches_copiers_names_the_later_uploader_and_spares_honest_peers():
    cfg = SparseLoCoConfig()
    g = torch.Generator().manual_seed(0)
    honest = [{n: torch.randn(s, generator=g) for n, s in SHAPES.items()} for _ in range(4)]
    copier = honest[1]  # the same Δ, re-signed by its own hotkey
    noisy = {n: t + 0.3 * torch.randn(t.shape, generator=g) for n, t in honest[2].items()}
    deltas = honest + [copier, noisy]
    messages = [encode(d, cfg, PEERS[i]) for i, d in enumerate(deltas)]
    stats, sample = sampled_stats(messages, cfg, chunks=40)
    assert sample.chunks == 40 < sample.total_chunks
    hotkeys = [p.hotkey for p in PEERS]
    times = {h: float(i) for i, h in enumerate(hotkeys)}  # upload order = peer order
    found = find_copies(hotkeys, stats, times, threshold=0.4, value_similarity=0.95)
    assert {(f.offender, f.original) for f in found} == {(hotkeys[4], hotkeys[1]), (hotkeys[5], hotkeys[2])}
    earlier = dict(times, **{hotkeys[4]: -1.0})  # the copier uploaded first: the other one is the offender
    found = find_copies(hotkeys, stats, earlier, threshold=0.4, value_similarity=0.95)
    assert (hotkeys[1], hotkeys[4]) in {(f.offender, f.original) for f in found}
    honest_pairs = stats.overlap[:4, :4] - torch.eye(4)
    assert float(honest_pairs.max()) < 0.1


def test_the_default_sample_misclassifies_a_pair_with_probability_below_one_in_a_million():
    assert [chunks_needed(t) for t in (0.4, 0.5, 0.6)] == [687, 677, 687]
    default = ValidatorConfig().copy_sample_chunks
    assert default == 768
    for t in (0.4, 0.5, 0.6, 0.2):  # the reset/ban thresholds, and half the copy threshold
        bound = misclassification_bound(default, t)
        assert bound < 1e-6
        # the bound dominates the binomial tail (the extreme case of [0, 1]-valued chunk overlaps)
        assert sps.binom.sf(round(t * default) - 1, default, t - 0.1) <= bound
        assert sps.binom.cdf(round(t * default) - 1, default, t + 0.1) <= bound
    assert misclassification_bound(768, 0.5) == pytest.approx(1.56e-7, rel=1e-2)
    assert misclassification_bound(768, 0.4) == pytest.approx(1.92e-7, rel=1e-2)
    assert misclassification_bound(100, 0.5) > 1e-2  # too small a sample is visibly unsafe
    assert misclassification_bound(500, 0.5, total_chunks=400) == 0.0  # every chunk read: exact


def test_a_message_shorter_than_the_runs_layout_is_refused():
    cfg = SparseLoCoConfig()
    message = encode({n: torch.randn(s) for n, s in SHAPES.items()}, cfg, PEERS[0])
    sample = draw_sample(SHAPES, cfg, 0, 1)
    with pytest.raises(InvalidMessage, match="layout needs"):
        read_sample(message[:-100], data_start(message), sample)


def test_sampled_positions_are_read_at_the_right_bytes_whatever_order_the_model_lists_its_tensors():
    cfg = SparseLoCoConfig()
    message = encode({n: torch.randn(s) for n, s in SHAPES.items()}, cfg, PEERS[0])
    tensors = decode_message(message).tensors
    for spec in (SHAPES, dict(reversed(SHAPES.items()))):
        sample = draw_sample(spec, cfg, 30, seed=2)
        keys, values = read_sample(message, data_start(message), sample)
        assert keys.unique().numel() == keys.numel() == sample.kept
        # every sampled (position, value) is one the decoded message holds
        offset, lookup = 0, {}
        for name in sorted(SHAPES):
            ct = tensors[name]
            if not ct.layout.sparse:
                continue
            base = offset + torch.arange(ct.layout.num_chunks).view(-1, 1) * ct.layout.chunk_numel
            for key, val in zip((base + ct.idx).view(-1).tolist(), ct.values().view(-1).tolist()):
                lookup[key] = val
            offset += ct.layout.num_chunks * ct.layout.chunk_numel
        assert all(lookup[k] == v for k, v in zip(keys.tolist(), values.tolist()))


def test_positions_many_peers_share_are_counted_by_matmul_with_the_same_result(monkeypatch):
    import gauntlet.uniqueness.copying as copying

    g = torch.Generator().manual_seed(0)
    keys = torch.stack([torch.randperm(20000, generator=g)[:2000] + 1000 for _ in range(40)])
    keys[10:30, :500] = torch.arange(500)  # 20 sybils send the same 500 positions
    values = torch.randn(40, 2000, generator=g)
    hybrid = pair_stats(keys, values)
    monkeypatch.setattr(copying, "SMALL_GROUP", 10**9)  # every run paired entry by entry
    one_by_one = pair_stats(keys, values)
    assert torch.equal(hybrid.overlap, one_by_one.overlap)
    assert torch.allclose(hybrid.cosine, one_by_one.cosine, atol=1e-6)
    assert float(hybrid.overlap[10, 29]) >= 0.25  # the 500 shared of 2000 kept, plus chance
