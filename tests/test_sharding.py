"""The codec on dim-0 shards: the same message bytes, residuals and aggregate as one process, for any
number of ranks and any shape — including rows that split unevenly into shards and 64-row tiles."""

import pytest
import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.sparseloco import ErrorFeedback, aggregate, decode_message, encode_message
from gauntlet.sparseloco.sharding import ShardedErrorFeedback, SoloComm, make_plan, shard_rows
from thread_comm import run_ranks

# (100, 96): tiles of 50 rows, cut by shards of 25 or 34 rows; (130, 7): 3 tiles of 44 rows;
# (5, 4096): fewer rows than 8 ranks; (3, 40, 41): rank 3; (300,): 1-D, dense; (64, 64): one chunk
SHAPES = {"a.weight": (100, 96), "b.weight": (130, 7, 10), "c.weight": (5, 4096), "d.bias": (300,),
          "e.weight": (64, 64), "f.tiny": (3, 5)}


def deltas(windows: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(s, generator=g) * (1 + w) for n, s in SHAPES.items()} for w in range(windows)]


def whole_messages(cfg: SparseLoCoConfig, windows: list[dict]) -> tuple[list[bytes], ErrorFeedback]:
    ef = ErrorFeedback(SHAPES, cfg)
    return [encode_message(ef.compress(d), window=w, run="r", codec=cfg, hotkey="h")
            for w, d in enumerate(windows)], ef


def sharded_messages(cfg: SparseLoCoConfig, windows: list[dict], world: int):
    def rank(comm):
        ef = ShardedErrorFeedback(SHAPES, cfg, comm)
        rows = ef.local_rows()
        out = []
        for w, d in enumerate(windows):
            cts = ef.compress({n: t[slice(*rows[n])] for n, t in d.items()})
            out.append(encode_message(cts, window=w, run="r", codec=cfg, hotkey="h") if comm.rank == 0 else None)
        return out, {n: b.clone() for n, b in ef.buffers.items()}, rows

    return run_ranks(world, rank)


def test_shards_follow_torch_chunk():
    for n in (1, 5, 7, 64, 100, 4097):
        for world in (1, 2, 3, 4, 8):
            chunks = torch.arange(n).chunk(world)
            rows = [shard_rows(n, world, r) for r in range(world)]
            assert [b - a for a, b in rows] == [len(c) for c in chunks] + [0] * (world - len(chunks))
            assert [a for a, b in rows if b > a] == [int(c[0]) for c in chunks]


def test_each_tile_row_has_exactly_one_owner_holding_its_first_row():
    cfg = SparseLoCoConfig()
    for shape in SHAPES.values():
        for world in (1, 2, 3, 4, 8):
            plan = make_plan(shape, cfg, world)
            if not plan.layout.sparse or len(shape) == 1:
                continue
            owned = [t for t0, t1 in plan.owned for t in range(t0, t1)]
            assert owned == list(range(plan.layout.tiles_r))
            for r, (t0, t1) in enumerate(plan.owned):
                for t in range(t0, t1):
                    a, b = plan.rows[r]
                    assert a <= t * plan.layout.side_r < b


@pytest.mark.parametrize("bits", [2, 8])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_sharded_messages_are_byte_identical_to_one_process(world, bits):
    cfg = SparseLoCoConfig(quant_bits=bits)
    windows = deltas(3)
    expected, whole_ef = whole_messages(cfg, windows)
    ranks = sharded_messages(cfg, windows, world)
    assert ranks[0][0] == expected  # every window's message, byte for byte
    for _, buffers, rows in ranks:  # and every rank's residual rows equal the whole residual's
        for name in SHAPES:
            assert torch.equal(buffers[name], whole_ef.residual(name)[slice(*rows[name])]), (world, name)


def test_dense_8_bit_and_sparse_1d_codecs_shard_too():
    for cfg in (SparseLoCoConfig(min_sparse_numel=2**62, dense_bits=8), SparseLoCoConfig(sparse_1d=True)):
        windows = deltas(2, seed=1)
        expected, _ = whole_messages(cfg, windows)
        assert sharded_messages(cfg, windows, 3)[0][0] == expected


def test_one_rank_is_the_solo_world():
    cfg = SparseLoCoConfig()
    d = deltas(1)[0]
    ef = ShardedErrorFeedback(SHAPES, cfg, SoloComm())
    solo = encode_message(ef.compress(d), window=0, run="r", codec=cfg, hotkey="h")
    assert solo == whole_messages(cfg, [d])[0][0]


@pytest.mark.parametrize("combine", ["mean", "scatter_mean"])
def test_each_rank_decodes_its_rows_to_the_bits_of_the_whole_aggregate(combine):
    cfg = SparseLoCoConfig()
    peers = [whole_messages(cfg, deltas(2, seed=s))[0][-1] for s in range(3)]
    updates = [decode_message(m, require_signature=False).tensors for m in peers]
    whole = aggregate(updates, combine, clip_to_median=True)
    for world in (2, 3, 4):
        for rank in range(world):
            rows = {n: shard_rows(s[0], world, rank) for n, s in SHAPES.items()}
            part = aggregate(updates, combine, clip_to_median=True, rows=rows)
            for n in SHAPES:
                assert torch.equal(part[n], whole[n][slice(*rows[n])]), (world, rank, n)
