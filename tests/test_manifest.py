"""The run manifest: what defines a run (and its hash), how the subnet owner publishes it, and how a
node joins with nothing but the chain, its wallet and its own bucket."""

import hashlib
import json
import shutil
import urllib.request
from unittest import mock
from pathlib import Path

import pytest
from pydantic import Field, create_model

from gauntlet.chain.local import LocalChain
from gauntlet.config import (
    GauntletConfig,
    _section_type,
    config_from_manifest,
    is_local,
    load_config,
    local_settings,
    manifest_document,
    manifest_hash,
    read_settings,
)
from gauntlet.errors import ChainError, ConfigError, InvalidMessage, SignatureError
from gauntlet.identity import Identity
from gauntlet.storage import BucketCard, FileStore, keys
from peers.cli import build_parser, main
from peers.cli.flags import node_config
from peers.network.manifest import committed_run, decode_manifest, encode_manifest, publish_manifest

DATA = Path(__file__).parent / "data"
OWNER, OTHER = Identity.from_seed("manifest-owner"), Identity.from_seed("manifest-other")


def _shared_defaults(model=GauntletConfig, values=None) -> dict:
    values = GauntletConfig().model_dump(mode="json") if values is None else values
    out = {}
    for name, field in model.model_fields.items():
        section = _section_type(field.annotation)
        if section is not None:
            out[name] = _shared_defaults(section, values[name])
        elif not is_local(model, name):
            out[name] = values[name]
    return out


def test_the_run_hash_is_the_hash_of_the_manifest_and_local_settings_stay_out_of_it():
    base = load_config(overrides=["sparseloco.topk=32", "inner.betas=[0.9,0.99]"])
    assert base.manifest() == {"protocol": 1, "requires": "0.2.0",
                               "settings": {"sparseloco": {"topk": 32}, "inner": {"betas": [0.9, 0.99]}}}
    canonical = '{"protocol":1,"requires":"0.2.0","settings":{"inner":{"betas":[0.9,0.99]},"sparseloco":{"topk":32}}}'
    assert base.run_hash() == hashlib.sha256(canonical.encode()).hexdigest()[:32]
    local = load_config(overrides=["sparseloco.topk=32", "inner.betas=[0.9,0.99]", "model.device=cuda:1",
                                   "model.autocast_bf16=false", "data.path=/mnt/copy", "train.eval_batches=5",
                                   "timing.gather_timeout_s=10", "validator.policy=tiered", "validator.burn_share=0.2",
                                   "validator.weights_every=4"])
    assert local.run_hash() == base.run_hash() and local.manifest() == base.manifest()
    assert local_settings(local)["model"] == {"device": "cuda:1", "autocast_bf16": False}
    for run_setting in ("sparseloco.topk=16", "data.sha256=" + "0" * 64, "seed=1", "validator.eval_peers=3",
                        "timing.blocks_per_window=50", "model.preset=small", "data.source=/srv/corpus"):
        assert load_config(overrides=[run_setting]).run_hash() != GauntletConfig().run_hash(), run_setting
    # a run setting given at its default value is the same run as one that leaves it out
    assert load_config(overrides=["sparseloco.topk=64"]).run_hash() == GauntletConfig().run_hash()


def test_a_setting_a_release_adds_with_a_default_leaves_every_manifest_and_run_hash_as_it_was():
    newer_section = create_model("NewerSparseLoCo", __base__=type(GauntletConfig().sparseloco),
                                 momentum_free=(bool, Field(False)))
    newer = create_model("NewerConfig", __base__=GauntletConfig, sparseloco=(newer_section, newer_section()),
                         curriculum=(str, Field("none")))
    for overrides in ({}, {"sparseloco": {"topk": 32}, "seed": 3}):
        old, new = GauntletConfig.model_validate(overrides), newer.model_validate(overrides)
        assert manifest_document(new) == manifest_document(old)
        assert manifest_hash(manifest_document(new)) == old.run_hash()
    changed = newer.model_validate({"curriculum": "short-first"})
    assert manifest_document(changed)["settings"] == {"curriculum": "short-first"}


def test_a_manifest_written_by_release_0_2_0_still_verifies_with_its_hash():
    signed = decode_manifest((DATA / "manifest-0.2.0.json").read_bytes(),
                             owner="5HHXY5y14E8HbZW34cJF3krWSSejdvHHe8PYTEcBCCwWkxag")
    assert signed.run_hash == "d6749311aa41b856ae8816411c0111c3" and signed.written_by == "0.2.0"
    cfg = config_from_manifest(signed.document, read_settings(overrides=["model.device=cpu"]))
    assert cfg.run_hash() == signed.run_hash
    assert (cfg.run_name, cfg.sparseloco.topk, cfg.inner.steps, cfg.data.seq_len) == ("fixture-run", 32, 10, 64)


def test_the_defaults_of_protocol_1s_run_settings_are_pinned():
    """A manifest leaves out the run settings at their defaults, so changing one of these defaults
    changes the meaning of every manifest: that needs a new protocol version (gauntlet.config.PROTOCOL)."""
    assert _shared_defaults() == json.loads((DATA / "protocol-1-defaults.json").read_text())


def test_local_input_may_repeat_a_run_setting_but_not_change_it():
    document = load_config(overrides=["sparseloco.topk=32"]).manifest()
    same = config_from_manifest(document, read_settings(overrides=["sparseloco.topk=32", "model.device=cpu"]))
    assert same.sparseloco.topk == 32 and same.model.device == "cpu"
    with pytest.raises(ConfigError, match=r"sparseloco.topk \(the run: 32, here: 16\).*run settings come from the "
                                          r"run's manifest"):
        config_from_manifest(document, read_settings(overrides=["sparseloco.topk=16"]))
    with pytest.raises(ConfigError, match=r"inner.steps \(the run: 'default', here: 3\)"):
        config_from_manifest(document, read_settings(overrides=["inner.steps=3"]))


def test_a_manifest_of_a_newer_protocol_is_refused_with_the_release_to_upgrade_to():
    newer = {"protocol": 2, "requires": "0.9.0", "settings": {}}
    with pytest.raises(ConfigError, match=r"protocol 2; gauntlet 0.2.0 speaks protocol 1: upgrade gauntlet to >= 0.9.0"):
        decode_manifest(encode_manifest(newer, OWNER), owner=OWNER.hotkey)
    with pytest.raises(ConfigError, match=r"protocol 1, which gauntlet 0.2.0 no longer speaks \(it speaks protocol 2\)"):
        with mock.patch("gauntlet.config.PROTOCOL", 2):  # as a release of protocol 2 will see a manifest of 1
            config_from_manifest({"protocol": 1, "requires": "0.2.0", "settings": {}})
    for bad in ({"protocol": "1", "requires": "0.2.0", "settings": {}}, {"protocol": 1, "settings": {}},
                {"protocol": 1, "requires": "0.2.0", "settings": []}):
        with pytest.raises(ConfigError, match="not a run manifest"):
            config_from_manifest(bad)
    unknown = {"protocol": 1, "requires": "0.2.0", "settings": {"sparseloco": {"momentum_free": True}}}
    with pytest.raises(ConfigError, match=r"written by gauntlet 0.3.1: a setting this release lacks needs gauntlet "
                                          r">= 0.3.1.*sparseloco.momentum_free"):
        config_from_manifest(unknown, written_by="0.3.1")


def test_only_the_owners_untampered_manifest_is_accepted():
    document = load_config(overrides=["seed=7"]).manifest()
    data = encode_manifest(document, OWNER)
    assert decode_manifest(data, owner=OWNER.hotkey, run_hash=manifest_hash(document)).document == document
    with pytest.raises(SignatureError, match="not a trusted"):
        decode_manifest(encode_manifest(document, OTHER), owner=OWNER.hotkey)
    body = json.loads(data)
    body["manifest"]["settings"]["seed"] = 8
    with pytest.raises(SignatureError, match="does not verify"):
        decode_manifest(json.dumps(body).encode(), owner=OWNER.hotkey)
    with pytest.raises(InvalidMessage, match="not to the run hash"):
        decode_manifest(data, owner=OWNER.hotkey, run_hash="0" * 32)
    for junk in (b"\xff", b"[]", b"x" * (65 << 10)):
        with pytest.raises(InvalidMessage):
            decode_manifest(junk, owner=OWNER.hotkey)


def _node_args(tmp_path: Path, chain: LocalChain, name: str, *extra: str):
    return build_parser().parse_args(["peer", "--manifest", "chain", "--chain", chain.url, "--identity-seed", name,
                                      "--storage", f"file://{tmp_path / name / 'bucket'}", "--allow-local-cards",
                                      "--run-dir", str(tmp_path / name / "state"), *extra])


def test_a_node_joins_the_owners_run_from_the_chain_and_keeps_it_cached(tmp_path, caplog):
    chain = LocalChain(tmp_path / "chain.db", clock="manual")
    args = _node_args(tmp_path, chain, "peer-a", "--set", "model.device=cpu")
    with pytest.raises(ChainError, match="has no subnet owner"):
        node_config(args, chain)
    chain.register(OWNER.hotkey)
    chain.set_owner(OWNER.hotkey)
    with pytest.raises(ConfigError, match=r"has published no run manifest yet.*--manifest none"):
        node_config(args, chain)
    owner_store = FileStore(tmp_path / "owner")
    run = load_config(overrides=["run_name=joined", "sparseloco.topk=32"])
    run_hash = publish_manifest(run.manifest(), OWNER, owner_store, _card(owner_store), chain)
    assert committed_run(chain)[2] == run_hash == run.run_hash()
    cfg = node_config(args, chain)
    assert (cfg.run_hash(), cfg.run_name, cfg.sparseloco.topk, cfg.model.device) == (run_hash, "joined", 32, "cpu")
    cached = tmp_path / "peer-a" / "state" / "manifest.json"
    assert cached.read_bytes() == owner_store.get(keys.manifest(run_hash))
    owner_store.delete(keys.manifest(run_hash))  # the owner's bucket is gone: the cached copy serves
    assert node_config(args, chain).run_hash() == run_hash
    cached.write_bytes(cached.read_bytes().replace(b'"topk":32', b'"topk":16'))  # a tampered copy is not used
    with pytest.raises(ConfigError, match="cannot read run manifest"):
        node_config(args, chain)
    assert "ignoring the cached run manifest" in caplog.text
    publish_manifest(run.manifest(), OWNER, owner_store, _card(owner_store), chain)
    owner_store.put(keys.manifest(run_hash), encode_manifest(run.manifest(), OTHER))  # not signed by the owner
    cached.unlink()
    with pytest.raises(ConfigError, match="not valid: .*not a trusted"):
        node_config(args, chain)


def _card(store: FileStore) -> BucketCard:
    return BucketCard("file", str(store.root))


def test_gauntlet_run_publish_pins_the_data_and_show_prints_what_nodes_join(tmp_path, capsys):
    settings = tmp_path / "run.toml"
    settings.write_text('run_name = "cli-run"\n[data]\nseq_len = 64\nmax_tokens = 200000\n[model]\ndevice = "cpu"\n')
    chain_url = f"local://{tmp_path / 'chain.db'}"
    common = ["--data-dir", str(tmp_path / "data"), "--identity-seed", "cli-owner", "--chain", chain_url,
              "--storage", f"file://{tmp_path / 'owner'}"]
    assert main(["run", "publish", str(settings), *common]) == 1  # not the subnet owner (there is none yet)
    assert "no subnet owner" in capsys.readouterr().err
    assert main(["run", "publish", str(settings), *common, "--register"]) == 0
    printed = capsys.readouterr().out
    run_hash = printed.split("published run ")[1].split()[0]
    assert "data.sha256 = " in printed and "model.device" not in printed  # a local setting is not published
    assert main(["run", "show", "--chain", chain_url, "--allow-local-cards", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run_hash"] == run_hash and shown["owner"] == Identity.from_seed("cli-owner").hotkey
    assert shown["manifest"]["settings"]["run_name"] == "cli-run" and shown["config"]["data"]["seq_len"] == 64
    assert len(shown["manifest"]["settings"]["data"]["sha256"]) == 64
    assert main(["run", "publish", str(settings), *common[:-4], "--identity-seed", "someone-else", "--chain",
                 chain_url, "--storage", f"file://{tmp_path / 'x'}", "--register"]) == 0  # local: any hotkey may own
    capsys.readouterr()
    LocalChain(tmp_path / "chain.db").set_owner(Identity.from_seed("cli-owner").hotkey)
    assert main(["run", "publish", str(settings), *common[:4], "--identity-seed", "someone-else", "--chain",
                 chain_url, "--storage", f"file://{tmp_path / 'x'}"]) == 1
    assert "is not the subnet owner's" in capsys.readouterr().err


def test_data_identity_is_the_content_not_the_path(tmp_path):
    from gauntlet.data import open_dataset
    from gauntlet.data.identity import data_identity
    from gauntlet.errors import DataError

    cfg = load_config(overrides=["data.seq_len=64", "data.max_tokens=200000"]).data
    train, val = open_dataset(cfg, tmp_path / "cache")
    identity = data_identity(train, val)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(train.root, copy)  # the prepared folder, read as token shards from another path
    pinned = cfg.model_copy(update={"path": str(copy), "sha256": identity})
    assert data_identity(*open_dataset(pinned, tmp_path / "other-cache")) == identity
    (copy / "val-00000.bin").write_bytes(bytes(reversed((copy / "val-00000.bin").read_bytes())))
    with pytest.raises(DataError, match=f"not this run's: its identity .* the run's is {identity}"):
        open_dataset(pinned, tmp_path / "third-cache")


@pytest.mark.slow
def test_two_nodes_with_different_local_settings_join_the_same_run_and_train_together(tmp_path):
    """Different devices, data paths, retention and metrics settings: one run, both peers' updates in
    the aggregate, both on the validator's weights."""
    from gauntlet.data import open_dataset
    from gauntlet.data.identity import cached_identity
    from peers.behaviours import Behaviour
    from peers.cli.flags import node_options
    from peers.peer import Peer, PeerOptions
    from peers.sim.live import publish_run
    from peers.sim.lockstep import build, run_window

    data_dir = tmp_path / "data"
    run = load_config(overrides=["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "data.max_tokens=200000",
                                 "inner.warmup_steps=2", "inner.lr=3e-3", "timing.blocks_per_window=10",
                                 "timing.upload_slot_s=20", "model.device=cpu", "validator.eval_own_sequences=16",
                                 "validator.eval_random_sequences=32"])
    train, val = open_dataset(run.data, data_dir)
    run = run.model_copy(update={"data": run.data.model_copy(update={"sha256": cached_identity(train, val, data_dir)})})
    net = build(tmp_path / "net", run, {}, data_dir)
    publish_run(run, OWNER, net.chain, FileStore(tmp_path / "owner"))
    copy = tmp_path / "copy-of-the-corpus"
    shutil.copytree(train.root, copy)
    local = {"a": ["--set", "model.device=cpu", "--retain", "28", "--metrics.port", "0"],
             "b": ["--set", "model.device=auto", "--set", f"data.path={copy}", "--set", "train.eval_batches=1"]}
    for name, extra in local.items():
        args = _node_args(tmp_path, net.chain, name, "--data-dir", str(data_dir), *extra)
        cfg = node_config(args, net.chain)
        assert cfg.run_hash() == net.validator.run_hash and cfg.data.sha256 == run.data.sha256
        identity = Identity.from_seed(name)
        net.chain.register(identity.hotkey)
        store = FileStore(tmp_path / name / "bucket", clock=net.clock)
        opts = node_options(PeerOptions, args, "peer", cfg, BucketCard("file", str(store.root)), None)
        net.peers[name] = Peer(cfg, identity, net.chain, store, opts, Behaviour())
        net.peers[name].start()
        net.peers[name].start_metrics()  # what run_forever does first
    assert (net.peers["a"].opts.retain, net.peers["b"].opts.retain) == (28, 0)
    assert net.peers["a"].metrics_server is not None and net.peers["b"].metrics_server is None
    hotkeys = {p.identity.hotkey for p in net.peers.values()}
    for window in range(2):
        record = run_window(net)
        assert set(record["aggregated"]) == hotkeys, window
        for peer in net.peers.values():
            line = json.loads((peer.opts.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
            assert (line["window"], line["fingerprint"]) == (window, record["fingerprint"])
    with urllib.request.urlopen(f"http://127.0.0.1:{net.peers['a'].metrics_server.port}/metrics", timeout=10) as r:
        assert b"gauntlet_" in r.read()
    for peer in net.peers.values():
        peer.stop_metrics()


def test_a_peer_given_a_manifest_of_a_newer_protocol_stops_with_the_upgrade_message(tmp_path, capsys):
    chain = LocalChain(tmp_path / "chain.db", clock="manual")
    chain.register(OWNER.hotkey)
    chain.set_owner(OWNER.hotkey)
    store = FileStore(tmp_path / "owner")
    newer = {"protocol": 2, "requires": "0.9.0", "settings": {"sparseloco": {"topk": 16}}}
    store.put(keys.manifest(manifest_hash(newer)), encode_manifest(newer, OWNER))
    chain.commit(OWNER, BucketCard("file", str(store.root), note=f"manifest:{manifest_hash(newer)}").encode())
    code = main(["peer", "--manifest", "chain", "--chain", chain.url, "--identity-seed", "new-peer", "--register",
                 "--storage", f"file://{tmp_path / 'peer'}", "--allow-local-cards", "--run-dir", str(tmp_path / "run")])
    assert code == 1
    assert "upgrade gauntlet to >= 0.9.0" in capsys.readouterr().err
    assert not (tmp_path / "run" / "manifest.json").exists()  # nothing of the refused run is kept


def test_the_built_in_corpus_is_the_same_tokens_on_every_machine(tmp_path):
    """Shipped with gauntlet (not read from the interpreter's own standard library), so its identity
    is a constant; a damaged copy is refused."""
    from gauntlet.data import open_dataset
    from gauntlet.data.identity import data_identity
    from gauntlet.data.sources import BUILTIN, _stdlib
    from gauntlet.errors import DataError

    cfg = load_config(overrides=["data.seq_len=64", "data.max_tokens=200000"]).data
    assert data_identity(*open_dataset(cfg, tmp_path)) == \
        "f5801e3e9059c802b90ad10724f9096e245ba695e00001c8cc71cc0fef721aa4"
    damaged = tmp_path / "stdlib.jsonl.xz"
    damaged.write_bytes(BUILTIN.read_bytes()[:-1])
    with pytest.raises(DataError, match="not the one this release ships"):
        next(_stdlib(damaged))


def test_a_manifest_not_in_canonical_form_is_refused_since_its_hash_would_not_be_the_run_hash():
    with pytest.raises(ConfigError, match=r"not in canonical form \(sparseloco.topk: a setting at its default"):
        config_from_manifest({"protocol": 1, "requires": "0.2.0", "settings": {"sparseloco": {"topk": 64}, "seed": 2}})
    with pytest.raises(ConfigError, match=r"not in canonical form \(sparseloco.outer_lr: "):  # 2 where 2.0 is meant
        config_from_manifest({"protocol": 1, "requires": "0.2.0", "settings": {"sparseloco": {"outer_lr": 2}}})


def test_publish_and_the_ranks_copy_say_what_is_missing(tmp_path, capsys):
    from peers.network.manifest import read_saved_manifest

    settings = tmp_path / "run.toml"
    settings.write_text('[data]\nseq_len = 64\nmax_tokens = 200000\n')
    base = ["run", "publish", str(settings), "--data-dir", str(tmp_path / "data"), "--identity-seed", "owner"]
    assert main([*base, "--chain", f"local://{tmp_path / 'chain.db'}"]) == 1
    assert "no bucket: pass --storage" in capsys.readouterr().err
    assert main([*base, "--storage", f"file://{tmp_path / 'owner'}"]) == 1
    assert "no chain: pass --chain URL, or --netuid" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="the run manifest rank 0 joined cannot be read"):
        read_saved_manifest(tmp_path / "missing.json")
    (tmp_path / "forged.json").write_bytes(encode_manifest(load_config().manifest(), OTHER).replace(b'"v":1', b'"v":2'))
    with pytest.raises(ConfigError, match="wrong fields or version"):
        read_saved_manifest(tmp_path / "forged.json")
