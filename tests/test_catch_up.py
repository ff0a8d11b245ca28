"""A new peer catches up from a validator-signed checkpoint and the validator's replay lists."""

import json
import time

import pytest
import torch

from gauntlet.chain.local import LocalChain
from gauntlet.config import load_config
from gauntlet.data import prepare
from gauntlet.errors import InvalidMessage, SignatureError
from gauntlet.identity import Identity
from gauntlet.models import build_model
from gauntlet.storage import BucketCard, FileStore, keys
from peers.network.artefacts import decode_artefact, encode_artefact
from peers.peer import Peer, PeerOptions

VALIDATOR, PEER, STRANGER = (Identity.from_seed(s) for s in ("validator", "peer", "stranger"))


@pytest.fixture(scope="module")
def cfg_and_data(tmp_path_factory):
    cfg = load_config(overrides=["data.seq_len=64", "data.max_tokens=300000", "timing.blocks_per_window=10",
                                 "timing.upload_slot_s=0.02", "timing.slot_grace_s=0.01", "model.device=cpu",
                                 "sparseloco.outer_lr=0.7"])
    data = tmp_path_factory.mktemp("data")
    prepare(cfg.data, data)
    return cfg, data


def spec_of(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def test_a_new_peer_loads_the_latest_checkpoint_then_replays_the_listed_messages(tmp_path, cfg_and_data):
    """Checkpoint of window 2, then windows 3 and 4 from the validator's replay lists: the messages they
    name are read from their senders' buckets and aggregated in the list's order."""
    from gauntlet.sparseloco import ErrorFeedback, aggregate, decode_message, encode_message, outer_step
    from peers.network.replay import encode_replay, message_id

    cfg, data = cfg_and_data
    chain = LocalChain(tmp_path / "chain.db", block_time=0.01)  # 0.1-second windows
    vstore, pstore = FileStore(tmp_path / "v"), FileStore(tmp_path / "p")
    chain.register(VALIDATOR.hotkey, stake=100.0, validator_permit=True)
    chain.register(PEER.hotkey)
    chain.commit(VALIDATOR, BucketCard("file", str(vstore.root)).encode())
    model = build_model(cfg.model, 256, 64, seed=cfg.seed)
    spec = spec_of(model)
    g = torch.Generator().manual_seed(1)
    ckpt = {n: p.detach() + 0.01 * torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    run = cfg.run_hash()
    vstore.put(keys.checkpoint(cfg.run_name, 1), encode_artefact("checkpoint", {n: t * 0 for n, t in ckpt.items()},
                                                                   run=run, window=1, signer=VALIDATOR))
    vstore.put(keys.checkpoint(cfg.run_name, 2), encode_artefact("checkpoint", ckpt, run=run, window=2,
                                                                   signer=VALIDATOR))
    senders = sorted((Identity.from_seed(s) for s in ("sender-a", "sender-b")), key=lambda i: i.hotkey)
    expected, stores = {n: t.clone() for n, t in ckpt.items()}, {}
    for ident in senders:
        stores[ident.hotkey] = FileStore(tmp_path / ident.hotkey[:8])
        chain.register(ident.hotkey)
        chain.commit(ident, BucketCard("file", str(stores[ident.hotkey].root)).encode())
    for w in (3, 4):
        listed, decoded = [], []
        for ident in senders:
            ef = ErrorFeedback(spec, cfg.sparseloco)
            delta = {n: 1e-3 * torch.randn(s, generator=g) for n, s in spec.items()}
            msg = encode_message(ef.compress(delta), window=w, run=run, codec=cfg.sparseloco, signer=ident)
            stores[ident.hotkey].put(keys.message(cfg.run_name, w, ident.hotkey), msg)
            m = decode_message(msg, spec=spec, expected_window=w, expected_run=run, expected_codec=cfg.sparseloco)
            listed.append((ident.hotkey, message_id(m)))
            decoded.append(m.tensors)
        vstore.put(keys.replay(cfg.run_name, w), encode_replay(w, listed, "fp", run=run, signer=VALIDATOR))
        agg = aggregate(decoded, cfg.sparseloco.combine, cfg.sparseloco.clip_to_median)
        outer_step(expected, agg, cfg.sparseloco.outer_lr)
    while chain.block() // 10 < 6:
        time.sleep(0.02)

    opts = PeerOptions(run_dir=tmp_path / "run", data_dir=data, card=BucketCard("file", str(pstore.root)),
                       allow_local_cards=True, stop_after_window=4, export_hf=tmp_path / "hf")
    peer = Peer(cfg, PEER, chain, pstore, opts)
    peer.run_forever()

    assert all(torch.equal(p.detach(), expected[n]) for n, p in peer.model.named_parameters())
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "checkpoint" and lines[0]["window"] == 2
    assert [(m["window"], m["trained"], m["replayed"], len(m["gathered"])) for m in lines[1:]] == \
        [(3, False, True, 2), (4, False, True, 2)]
    assert chain.commitments()[PEER.hotkey].data == BucketCard("file", str(pstore.root)).encode()
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")  # written when the peer stopped
    assert all(torch.equal(p.detach(), expected[n]) for n, p in exported.named_parameters())


def test_artefacts_are_rejected_unless_trusted_intact_and_shaped_like_the_model(cfg_and_data):
    cfg, _ = cfg_and_data
    tensors = {"a.weight": torch.randn(4, 3), "b": torch.randn(3)}
    spec = {n: tuple(t.shape) for n, t in tensors.items()}
    good = encode_artefact("checkpoint", tensors, run="r", window=5, signer=VALIDATOR)
    window, loaded = decode_artefact(good, kind="checkpoint", run="r", window=5, trusted={VALIDATOR.hotkey},
                                     spec=spec, max_bytes=1 << 20)
    assert window == 5 and all(torch.equal(loaded[n], tensors[n]) for n in tensors)
    common = dict(run="r", spec=spec, max_bytes=1 << 20)
    with pytest.raises(SignatureError, match="not a trusted"):
        decode_artefact(good, kind="checkpoint", window=5, trusted={STRANGER.hotkey}, **common)
    with pytest.raises(InvalidMessage, match="window 5"):
        decode_artefact(good, kind="checkpoint", window=6, trusted={VALIDATOR.hotkey}, **common)
    tampered = bytearray(good)
    tampered[-1] ^= 1
    with pytest.raises(InvalidMessage, match="hash"):
        decode_artefact(bytes(tampered), kind="checkpoint", window=5, trusted={VALIDATOR.hotkey}, **common)
    with pytest.raises(InvalidMessage, match="do not match the model"):
        decode_artefact(good, kind="checkpoint", window=5, trusted={VALIDATOR.hotkey}, run="r",
                        spec={"a.weight": (3, 4), "b": (3,)}, max_bytes=1 << 20)
    with pytest.raises(InvalidMessage, match="over the"):
        decode_artefact(good, kind="checkpoint", window=5, trusted={VALIDATOR.hotkey}, run="r", spec=spec,
                        max_bytes=100)
    import safetensors.torch

    with pytest.raises(SignatureError, match="not signed"):
        decode_artefact(safetensors.torch.save(tensors), kind="checkpoint", window=5, trusted={VALIDATOR.hotkey},
                        **common)


def test_hugging_face_export_loads_with_from_pretrained(tmp_path, cfg_and_data):
    from transformers import AutoModelForCausalLM

    from peers.ops.export import export_hf

    cfg, _ = cfg_and_data
    model = build_model(cfg.model, 256, 64, seed=3)
    out = export_hf(model, tmp_path / "hf", run="r", window=9)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters()))
    assert json.loads((out / "gauntlet.json").read_text()) == {"run": "r", "window": 9, "tokenizer": "bytes"}


def test_hub_push_retries_transient_failures_then_gives_up(tmp_path):
    from peers.ops.export import push_to_hub

    calls = []

    def flaky(**kwargs):
        calls.append(kwargs)
        if len(calls) < 3:
            raise ConnectionError("reset by peer")

    push_to_hub(tmp_path, "me/model", upload=flaky, backoff_s=0.001)
    assert len(calls) == 3 and calls[-1]["repo_id"] == "me/model"

    def down(**kwargs):
        raise TimeoutError("no route")

    with pytest.raises(TimeoutError):
        push_to_hub(tmp_path, "me/model", upload=down, attempts=2, backoff_s=0.001)


def test_a_checkpoint_written_to_a_file_is_the_artefact_encode_builds_in_memory(tmp_path):
    from peers.network.artefacts import write_artefact
    from wire_helpers import split

    tensors = {"a.weight": torch.randn(40, 30), "b": torch.randn(7), "c": torch.randn(3, 2).bfloat16()}
    spec = {n: tuple(t.shape) for n, t in tensors.items()}
    size = write_artefact(tmp_path / "ckpt", "checkpoint", tensors, run="r", window=5, signer=VALIDATOR)
    data = (tmp_path / "ckpt").read_bytes()
    assert size == len(data)
    window, loaded = decode_artefact(data, kind="checkpoint", run="r", window=5, trusted={VALIDATOR.hotkey},
                                     spec=spec, max_bytes=1 << 20)
    assert window == 5 and all(torch.equal(loaded[n], tensors[n]) for n in tensors)
    in_memory = encode_artefact("checkpoint", tensors, run="r", window=5, signer=VALIDATOR)
    (head, payload), (head2, payload2) = split(data), split(in_memory)
    assert payload == payload2 and len(data) == len(in_memory)
    assert head["__metadata__"]["gauntlet-artefact"] == head2["__metadata__"]["gauntlet-artefact"]


def test_a_checkpoint_file_is_checked_like_its_bytes_and_read_one_tensor_at_a_time(tmp_path):
    from peers.network.artefacts import ArtefactTensors, open_artefact, write_artefact

    tensors = {"a.weight": torch.randn(40, 30), "b": torch.randn(7), "c": torch.randn(3, 2).bfloat16()}
    spec = {n: tuple(t.shape) for n, t in tensors.items()}
    path = tmp_path / "ckpt"
    write_artefact(path, "checkpoint", tensors, run="r", window=5, signer=VALIDATOR)
    window, lazy = open_artefact(path, kind="checkpoint", run="r", window=5, trusted={VALIDATOR.hotkey}, spec=spec)
    assert window == 5 and isinstance(lazy, ArtefactTensors) and sorted(lazy) == sorted(tensors)
    assert all(torch.equal(lazy[n], tensors[n]) for n in tensors)
    common = dict(kind="checkpoint", run="r", window=5, spec=spec)
    with pytest.raises(SignatureError, match="not a trusted"):
        open_artefact(path, trusted={STRANGER.hotkey}, **common)
    with pytest.raises(InvalidMessage, match="do not match the model"):
        open_artefact(path, kind="checkpoint", run="r", window=5, trusted={VALIDATOR.hotkey},
                      spec={**spec, "a.weight": (30, 40)})
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    (tmp_path / "tampered").write_bytes(bytes(data))
    with pytest.raises(InvalidMessage, match="payload does not match its hash"):
        open_artefact(tmp_path / "tampered", trusted={VALIDATOR.hotkey}, **common)
    (tmp_path / "huge-header").write_bytes((1 << 40).to_bytes(8, "little"))
    with pytest.raises(InvalidMessage, match="over the"):
        open_artefact(tmp_path / "huge-header", trusted={VALIDATOR.hotkey}, **common)
    with pytest.raises(InvalidMessage, match="cannot be read"):
        open_artefact(tmp_path / "missing", trusted={VALIDATOR.hotkey}, **common)
