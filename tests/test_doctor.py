"""`gauntlet doctor` finds each planted set-up mistake, on real servers, and passes a correct set-up."""

import json
import re
import threading
import time

import pytest

from gauntlet.chain.local import LocalChain
from gauntlet.identity import Identity
from gauntlet.storage import BucketCard
from peers.cli import main
from s3_servers import WeedMini

SEED = "doctor-node"
BUCKET = "doctor-bucket"


@pytest.fixture
def corpus(tmp_path):
    docs = tmp_path / "corpus"
    docs.mkdir()
    for i in range(40):
        (docs / f"doc{i}.txt").write_text(f"document {i} " + "some words for the doctor to read " * 20)
    return docs


def doctor(tmp_path, corpus, chain_url, storage, *extra, role="peer"):
    argv = ["doctor", "--role", role, "--identity-seed", SEED, "--chain", chain_url, "--storage", storage,
            "--run-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), "--json",
            "--set", f"data.source={corpus}", "--set", "data.seq_len=32", "--set", "model.device=cpu", *extra]
    return argv


def run(capsys, argv):
    code = main(argv)
    out = json.loads(capsys.readouterr().out)
    return code, {c["name"]: c for c in out["checks"]}


def local_chain(tmp_path, register=True, permit=False, **kw):
    path = tmp_path / "chain.db"
    chain = LocalChain(path, block_time=12.0, **kw)
    if register:
        chain.register(Identity.from_seed(SEED).hotkey, stake=1000.0 if permit else 0.0, validator_permit=permit)
    return chain, f"local://{path}"


def test_a_correct_local_set_up_passes_every_check(tmp_path, corpus, capsys):
    chain, url = local_chain(tmp_path)
    code, checks = run(capsys, doctor(tmp_path, corpus, url, f"file://{tmp_path / 'bucket'}", "--allow-local-cards"))
    assert code == 0, checks
    assert set(checks) == {"write key", "read key", "hotkey", "bucket card", "clock", "device", "data", "disk"}
    assert all(c["ok"] for c in checks.values())
    assert "put, read back and deleted" in checks["write key"]["reason"]
    assert checks["hotkey"]["reason"].startswith("registered as uid 0")


def test_an_unregistered_hotkey_and_a_validator_without_permit_fail(tmp_path, corpus, capsys):
    _, url = local_chain(tmp_path, register=False)
    code, checks = run(capsys, doctor(tmp_path, corpus, url, f"file://{tmp_path / 'bucket'}"))
    assert code == 1 and not checks["hotkey"]["ok"] and "not registered" in checks["hotkey"]["reason"]
    assert "btcli subnet register" in checks["hotkey"]["fix"]
    chain, _ = local_chain(tmp_path / "b", register=True, permit=False)
    code, checks = run(capsys, doctor(tmp_path, corpus, f"local://{tmp_path / 'b' / 'chain.db'}",
                                      f"file://{tmp_path / 'bucket'}", role="validator"))
    assert code == 1 and "no validator permit" in checks["hotkey"]["reason"]


def test_a_card_on_chain_for_another_bucket_fails(tmp_path, corpus, capsys):
    chain, url = local_chain(tmp_path)
    chain.commit(Identity.from_seed(SEED), BucketCard("file", str(tmp_path / "elsewhere")).encode())
    code, checks = run(capsys, doctor(tmp_path, corpus, url, f"file://{tmp_path / 'bucket'}", "--allow-local-cards"))
    assert code == 1 and not checks["bucket card"]["ok"]
    assert "location" in checks["bucket card"]["reason"] and "elsewhere" in checks["bucket card"]["reason"]


def test_a_card_other_nodes_would_refuse_fails_with_the_fix(tmp_path, corpus, capsys, moto_port):
    _, url = local_chain(tmp_path)
    keys = ["--storage.read-access-key", "r", "--storage.read-secret-key", "s"]
    for storage in (f"file://{tmp_path / 'bucket'}", f"s3://b?endpoint_url=http://127.0.0.1:{moto_port}&region=x"):
        code, checks = run(capsys, doctor(tmp_path, corpus, url, storage, *keys))
        card = checks["bucket card"]
        assert code == 1 and not card["ok"] and card["reason"].startswith("other nodes will refuse this card")
        assert "https://" in card["fix"] and "--allow-local-cards" in card["fix"]


def test_a_clock_an_hour_off_the_chain_fails(tmp_path, corpus, capsys):
    chain, url = local_chain(tmp_path, clock="manual", now=lambda: time.time() - 3600)
    chain.advance(5)  # block 5 was produced "an hour ago" by this machine's clock
    code, checks = run(capsys, doctor(tmp_path, corpus, url, f"file://{tmp_path / 'bucket'}"))
    assert code == 1 and not checks["clock"]["ok"]
    # an hour plus however long this busy machine took to get here
    assert re.search(r"\+36\d\d s off block 5", checks["clock"]["reason"]) and "chrony" in checks["clock"]["fix"]


def test_a_small_disk_fails_with_what_the_node_needs(tmp_path, corpus, capsys):
    _, url = local_chain(tmp_path)
    code, checks = run(capsys, doctor(tmp_path, corpus, url, f"file://{tmp_path / 'bucket'}",
                                      "--free-bytes", "1000000"))
    assert code == 1 and not checks["disk"]["ok"]
    assert "1 MB free" in checks["disk"]["reason"] and "needs 115 MB (53 MB a state" in checks["disk"]["reason"]


def test_a_missing_device_and_an_unreadable_data_source_fail_with_their_cause(tmp_path, corpus, capsys):
    _, url = local_chain(tmp_path)
    code, checks = run(capsys, doctor(tmp_path, corpus, url, f"file://{tmp_path / 'bucket'}", "--set",
                                      f"data.source={tmp_path / 'nowhere'}", "--set", "model.device=cuda:7"))
    assert code == 1 and not checks["device"]["ok"] and not checks["data"]["ok"]
    assert "no CUDA device" in checks["device"]["reason"] or "cuda" in checks["device"]["reason"].lower()
    assert "nowhere" in checks["data"]["reason"]


def test_an_unreachable_chain_is_a_failed_check_not_a_traceback(tmp_path, corpus, capsys):
    code, checks = run(capsys, doctor(tmp_path, corpus, "bittensor://ws://127.0.0.1:9/1",
                                      f"file://{tmp_path / 'bucket'}"))
    assert code == 1 and not checks["chain"]["ok"] and not checks["skipped"]["ok"]
    assert checks["write key"]["ok"] and "hotkey" not in checks


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    server = WeedMini(tmp_path_factory.mktemp("weed"), BUCKET)
    yield server
    server.close()


@pytest.mark.slow
def test_on_an_s3_server_that_enforces_keys(tmp_path, corpus, capsys, weed):
    _, url = local_chain(tmp_path)
    storage = f"s3://{BUCKET}?endpoint_url={weed.endpoint}&region=us-east-1"
    write = ["--storage.access-key", weed.WRITER[0], "--storage.secret-key", weed.WRITER[1]]
    # a correct read-only key
    code, checks = run(capsys, doctor(tmp_path, corpus, url, storage, *write, "--allow-local-cards",
                                      "--storage.read-access-key", weed.READER[0],
                                      "--storage.read-secret-key", weed.READER[1]))
    assert code == 0, checks
    assert checks["read key"]["reason"] == "reads the bucket; put and delete are refused"
    # the "read" key published is in fact the write key: anyone could overwrite this node's messages
    code, checks = run(capsys, doctor(tmp_path, corpus, url, storage, *write, "--allow-local-cards",
                                      "--storage.read-access-key", weed.WRITER[0],
                                      "--storage.read-secret-key", weed.WRITER[1]))
    assert code == 1 and not checks["read key"]["ok"]
    assert "can write and delete" in checks["read key"]["reason"]
    # a write key whose secret is wrong
    code, checks = run(capsys, doctor(tmp_path, corpus, url, storage, "--storage.access-key", weed.WRITER[0],
                                      "--storage.secret-key", "wrong-secret", "--storage.read-access-key",
                                      weed.READER[0], "--storage.read-secret-key", weed.READER[1]))
    assert code == 1 and not checks["write key"]["ok"] and "may not put" in checks["write key"]["reason"]
    # a bucket that does not exist
    code, checks = run(capsys, doctor(tmp_path, corpus, url, storage.replace(BUCKET, "no-such-bucket"), *write,
                                      "--storage.read-access-key", weed.READER[0],
                                      "--storage.read-secret-key", weed.READER[1]))
    assert code == 1 and not checks["read key"]["ok"] and "cannot read the bucket" in checks["read key"]["reason"]
    # the node ran before with the right bucket; now --storage names another bucket and region
    chain, _ = local_chain(tmp_path)
    chain.commit(Identity.from_seed(SEED), BucketCard("s3", weed.endpoint, BUCKET, "us-east-1", *weed.READER).encode())
    code, checks = run(capsys, doctor(tmp_path, corpus, url, storage.replace(BUCKET, "other-bucket").replace(
        "us-east-1", "eu-west-2"), *write, "--allow-local-cards", "--storage.read-access-key", weed.READER[0],
        "--storage.read-secret-key", weed.READER[1]))
    assert code == 1 and not checks["bucket card"]["ok"]
    assert "bucket 'doctor-bucket' on chain vs 'other-bucket' here" in checks["bucket card"]["reason"]
    assert "region 'us-east-1' on chain vs 'eu-west-2' here" in checks["bucket card"]["reason"]


def test_a_check_that_hangs_is_reported_and_does_not_keep_the_doctor_running():
    import subprocess
    import sys

    from peers.ops.doctor import guarded

    check = guarded("data", lambda: threading.Event().wait(), timeout=1.0)  # never answers
    assert not check.ok and check.reason == "no answer within 1 s" and "gauntlet data prepare" in check.fix
    # the abandoned check must not hold the process open once the doctor has reported
    code = ("import threading; from peers.ops.doctor import guarded; "
            "print(guarded('data', lambda: threading.Event().wait(), timeout=0.5).ok)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_the_run_manifest_is_checked_as_the_node_would_join_it(tmp_path, corpus, capsys):
    from gauntlet.config import load_config
    from gauntlet.storage import FileStore
    from peers.network.manifest import publish_manifest

    chain, url = local_chain(tmp_path)
    argv = doctor(tmp_path, corpus, url, f"file://{tmp_path / 'bucket'}", "--allow-local-cards", "--manifest", "chain")
    owner = Identity.from_seed("doctor-owner")
    chain.register(owner.hotkey)
    chain.set_owner(owner.hotkey)
    code, checks = run(capsys, argv)
    assert code == 1 and not checks["run manifest"]["ok"] and "published no run manifest" in checks["run manifest"][
        "reason"] and "gauntlet run publish" in checks["run manifest"]["fix"]
    run_cfg = load_config(overrides=[f"data.source={corpus}", "data.seq_len=32", "seed=5"])
    store = FileStore(tmp_path / "owner")
    publish_manifest(run_cfg.manifest(), owner, store, BucketCard("file", str(store.root)), chain)
    code, checks = run(capsys, argv)
    assert code == 0 and checks["run manifest"]["reason"].startswith(f"run {run_cfg.run_hash()}"), checks
    code, checks = run(capsys, [*argv, "--set", "data.seq_len=64"])  # a run setting this node would change
    assert code == 1 and "data.seq_len (the run: 32, here: 64)" in checks["run manifest"]["reason"]
