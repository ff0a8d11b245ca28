"""Run under torchrun (or plainly, for one process): the validator evaluates window 0 of a prepared
network (tests/test_sharded_nodes.py) with its model sharded over the ranks; rank 0 writes what it
decided to OUT/result.json."""

import json
import sys
from pathlib import Path

from gauntlet.chain.local import LocalChain
from gauntlet.config import load_config
from gauntlet.data import TokenDataset, prepare
from gauntlet.identity import Identity
from gauntlet.models import build_model
from gauntlet.parallel.world import exit_now, init_world, launched_by_torchrun, shutdown
from gauntlet.storage import BucketCard, FileStore
from peers.node.engine import ModelEngine
from peers.node.base import NodeOptions
from peers.validator import Validator

SETTINGS = ["inner.steps=2", "train.batch_size=4", "data.seq_len=64", "timing.blocks_per_window=10",
            "timing.upload_slot_s=0.5", "timing.slot_grace_s=0.2", "model.device=cpu", "train.eval_batches=1"]


def main(net: Path, data: Path, out: Path) -> None:
    cfg = load_config(overrides=SETTINGS)
    world = init_world("cpu") if launched_by_torchrun() else None
    if world is not None and not world.main:
        vocab = TokenDataset(prepare(cfg.data, data), "train").vocab_size
        ModelEngine(cfg, build_model(cfg.model, vocab, cfg.data.seq_len, seed=cfg.seed), world, train=False).serve()
        shutdown(world)
        exit_now(0)
    chain = LocalChain(net / "chain.db")
    store = FileStore(net / "validator")
    v = Validator(cfg, Identity.from_seed("validator"), chain, store,
                  NodeOptions(run_dir=out / "state", data_dir=data, card=BucketCard("file", str(store.root)),
                              allow_local_cards=True, world=world), eval_secret=b"fixed secret")
    record = v.evaluate_window(0)
    sample = v.engine.measure.weight_sample(64, 0)
    v.engine.stop()
    scores = [json.loads(line) for line in (out / "state" / "scores.jsonl").read_text().splitlines()]
    replay = (net / "validator").rglob("0000000000/replay.json")
    (out / "result.json").write_text(json.dumps({
        "scores": scores, "fingerprint": record["fingerprint"], "aggregated": record["aggregated"],
        "replay": next(replay).read_bytes().hex(), "sample": sample}))
    if world is not None:
        shutdown(world)
        exit_now(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
