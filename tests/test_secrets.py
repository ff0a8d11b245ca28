"""Write keys never leave the node that owns them: a whole live simulation is scanned for them."""

import json
import uuid

import pytest

from gauntlet.storage.s3_store import S3Store
from peers.cli import main
from peers.sim.live import READ_SECRET

pytestmark = pytest.mark.slow


def occurrences(blob: bytes, secrets: dict[str, bytes]) -> set[str]:
    return {name for name, s in secrets.items() if s in blob}


def test_no_artefact_of_a_live_simulation_holds_a_write_key(tmp_path, moto_port, monkeypatch):
    tag = uuid.uuid4().hex[:10]
    write_key, write_secret = f"WRITEKEY{tag.upper()}", f"write-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", write_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", write_secret)
    endpoint = f"http://127.0.0.1:{moto_port}"
    nodes = ["validator", "honest-0", "honest-1", "free-rider"]
    buckets = {n: S3Store(f"sec-{tag}-{n}", endpoint_url=endpoint, region="us-east-1") for n in nodes}
    for store in buckets.values():
        store.create_bucket()
    out = tmp_path / "run"
    assert main(["simulate", "--out", str(out), "--data-dir", str(tmp_path / "data"), "--quiet", "--mode", "live",
                 "--storage", f"s3://sec-{tag}-{{name}}?endpoint_url={endpoint}&region=us-east-1", "--honest", "2",
                 "--adversary", "free-rider", "--windows", "1", "--set", "timing.blocks_per_window=12"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["windows"] == 1 and json.loads((out / "crashed.json").read_text()) == {}
    weights = {p["name"]: p["weight"] for p in summary["peers"]}
    assert weights["free-rider"] == 0.0  # whatever weight is set after window 0 goes to the honest peers
    assert summary["honest_weight_share"] == pytest.approx(1.0 if any(weights.values()) else 0.0)

    secrets = {"write key id": write_key.encode(), "write secret": write_secret.encode()}
    leaks: dict[str, set[str]] = {}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "chain.db" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:  # logs, records, metrics, state files, the chain database, plots, report
        if found := occurrences(path.read_bytes(), secrets):
            leaks[str(path.relative_to(out))] = found
    objects = 0
    for store in buckets.values():  # messages, fingerprints, records, aggregates, checkpoints, lists
        for info in store.list():
            objects += 1
            if found := occurrences(store.get(info.key), secrets):
                leaks[f"s3://{store.bucket}/{info.key}"] = found
    assert objects >= 3 * 2, "the nodes stored almost nothing: the scan would prove nothing"
    assert not leaks, f"write keys leaked into: {leaks}"
    # the read-only secret is the one that is published (the scan does look where cards live)
    chain_db = b"".join(p.read_bytes() for p in out.rglob("chain.db*"))
    assert READ_SECRET.encode() in chain_db
