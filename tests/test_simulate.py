"""`gauntlet simulate`: a whole network on one machine, its summary and report."""

import json
import os
from pathlib import Path

import pytest

from peers.cli import main

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
SUMMARY_KEYS = {"windows", "wall_s", "bytes_per_message", "loss", "honest_weight_share", "first_list_window",
                "windows_list_late", "adversary_messages_aggregated", "adversary_messages_aggregated_total",
                "cannot_keep_up", "honest_token_share", "emission", "validators", "peers"}
PEER_KEYS = {"name", "behaviour", "hotkey", "weight", "ordinal", "final_score", "flagged", "tokens"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def simulate(out, data_dir, *extra):
    args = ["simulate", "--out", str(out), "--data-dir", str(data_dir), "--quiet", *extra]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


def test_lockstep_run_with_a_custom_adversary_is_reported_and_reproducible(tmp_path, data_dir):
    scenario = ["--honest", "3", "--adversary", "copier", "--adversary", "noise", "--adversary",
                "custom_adversary:Zeroes", "--windows", "6", "--seed", "7", "--validator", "honest@3",
                "--validator", "weight-copier@1"]
    first = simulate(tmp_path / "a", data_dir, *scenario)
    assert set(first) == SUMMARY_KEYS and all(set(p) == PEER_KEYS for p in first["peers"])
    assert first["windows"] == 6 and len(first["loss"]) == 6 and first["loss"][-1] < first["loss"][0]
    assert 0 < first["bytes_per_message"] < 200_000
    by_name = {p["name"]: p for p in first["peers"]}
    assert by_name["zeroes"]["behaviour"] == "custom_adversary:Zeroes"
    honest = [p["weight"] for p in first["peers"] if p["behaviour"] == "honest"]
    adversaries = [p["weight"] for p in first["peers"] if p["behaviour"] != "honest"]
    assert max(adversaries) < min(honest) and first["honest_weight_share"] >= 0.9
    assert by_name["copier"]["flagged"] and not any(by_name[f"honest-{i}"]["flagged"] for i in range(3))
    for name in ("report.md", "loss.png", "weights.png", "ratings.png", "factors.png", "tokens.png", "metrics.jsonl"):
        assert (tmp_path / "a" / name).stat().st_size > 500, name
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    # what entered the model: before the first list every valid message (copier, noise, zeroes too)
    assert first["windows_list_late"] == 0 and first["cannot_keep_up"] == []  # lockstep is never late
    assert lines[0]["list_rules"] == {"open": 3} and set(lines[0]["adversaries_aggregated"]) >= {"noise", "zeroes"}
    assert first["adversary_messages_aggregated_total"] == sum(len(m["adversaries_aggregated"]) for m in lines)
    # the chain paid: an epoch every 20 blocks (each time weights are set) and one after the run
    assert [e["block"] for e in first["emission"]] == [20, 40, 60, 80]
    minted = sum(e["owner"] + e["miners"] + e["validators"] for e in first["emission"])
    assert minted == pytest.approx(4 * 20, abs=1e-6)  # one token a block
    validators = {v["name"]: v for v in first["validators"]}
    assert list(validators) == ["honest-0", "weight-copier"] and all(v["tokens"] > 0 for v in validators.values())
    assert (validators["honest-0"]["stake"], validators["weight-copier"]["stake"]) == (750.0, 250.0)
    assert validators["weight-copier"]["behaviour"] == "weight-copier" and validators["weight-copier"]["vtrust"] > 0
    assert sum(p["tokens"] for p in first["peers"]) == pytest.approx(sum(e["miners"] for e in first["emission"]))
    assert first["honest_token_share"] >= 0.9
    report = (tmp_path / "a" / "report.md").read_text()
    assert "last weights on chain, set after window 5" in report
    assert "**weight-copier** (25% of the stake) evaluated nothing" in report
    # same seed, lockstep: the same windows again, identical apart from timings (the first 3 suffice)
    simulate(tmp_path / "b", data_dir, *scenario, "--windows", "3")

    def windows(run):
        return [{k: v for k, v in json.loads(line).items() if k != "phase_s"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    a, b = windows("a"), windows("b")
    assert len(b) == 3 and b[:2] == a[:2]
    assert {**b[2], "weights": None} == {**a[2], "weights": None}  # b also set weights at its last window


def test_bad_scenarios_are_explained(tmp_path, data_dir, capsys):
    assert main(["simulate", "--out", str(tmp_path), "--adversary", "nonsense", "--quiet"]) == 1
    assert "unknown behaviour" in capsys.readouterr().err
    assert main(["simulate", "--out", str(tmp_path), "--storage", "embedded-s3", "--quiet", "--data-dir",
                 str(data_dir), "--windows", "1"]) == 1
    assert "--mode live" in capsys.readouterr().err
    for flags, why in [(["--validator", "honest@x"], "must be a number"), (["--validator", "bribed"],
                       "unknown validator behaviour"), (["--validator", "honest@0"], "add up to 0"),
                       (["--validator", "lazy", "--validator", "weight-copier"], "at least one validator must evaluate"),
                       (["--validators", "-1"], "0 or more")]:
        assert main(["simulate", "--out", str(tmp_path), "--quiet", *flags]) == 1
        assert why in capsys.readouterr().err, flags


def test_live_run_finishes_ranks_honest_first_and_reports_a_crashed_node(tmp_path, data_dir, monkeypatch, moto_port):
    """A live network on S3 buckets whose write key is in the environment; also scanned for that key
    (tests/test_secrets.py)."""
    import uuid

    from gauntlet.storage.s3_store import S3Store
    from test_secrets import assert_no_write_key_leaked

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    tag = uuid.uuid4().hex[:10]
    write_key, write_secret = f"WRITEKEY{tag.upper()}", f"write-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", write_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", write_secret)
    endpoint = f"http://127.0.0.1:{moto_port}"
    buckets = [S3Store(f"sec-{tag}-{n}", endpoint_url=endpoint, region="us-east-1")
               for n in ("validator", "honest-0", "honest-1", "noise", "crasher", "owner")]
    for store in buckets:
        store.create_bucket()
    summary = simulate(tmp_path / "live", data_dir, "--mode", "live", "--honest", "2", "--adversary", "noise",
                       "--adversary", "custom_adversary:Crasher", "--windows", "4",
                       "--storage", f"s3://sec-{tag}-{{name}}?endpoint_url={endpoint}&region=us-east-1",
                       "--set", "timing.blocks_per_window=12")  # 4 nodes: 12-second windows suffice
    assert_no_write_key_leaked(tmp_path / "live", buckets, {"write key id": write_key.encode(),
                                                            "write secret": write_secret.encode()})
    crashed = json.loads((tmp_path / "live" / "crashed.json").read_text())
    assert crashed == {"crasher": 3}
    weights = {p["name"]: p["weight"] for p in summary["peers"]}
    ordinals = {p["name"]: p["ordinal"] for p in summary["peers"]}
    assert min(ordinals["honest-0"], ordinals["honest-1"]) > max(ordinals["noise"], ordinals["crasher"])
    assert weights["noise"] == weights["crasher"] == 0.0  # whatever weight is set goes to the honest peers
    assert summary["honest_weight_share"] == pytest.approx(1.0 if any(weights.values()) else 0.0)
    # the weights shown are those the validator set at the last window (4 windows, weights every 2)
    record = next(o.key for o in buckets[0].list() if o.key.endswith("0000000003/record.json"))
    last = json.loads(buckets[0].get(record))
    assert last["weights"] and "set after window 3" in (tmp_path / "live" / "report.md").read_text()
    # and only peers with a positive final score beside them have weight. (After 4 windows an honest
    # peer's final score may still be 0: its uniqueness average starts at 0 and moves by 0.05 a window,
    # and on this tiny model its own-data gain is often within noise of its random-data gain.)
    finals = {p["name"]: p["final_score"] for p in summary["peers"]}
    assert all(finals[n] > 0 for n in weights if weights[n] > 0), (weights, finals)


def test_the_embedded_s3_server_gives_every_node_a_bucket_it_can_write_and_others_can_read(tmp_path,
                                                                                             monkeypatch):
    """What `--storage embedded-s3` adds to a live run (the live run above is a whole network on S3
    buckets): a loopback server, one bucket per node, and the nodes' credentials."""
    from gauntlet.storage import open_store
    from peers.sim.live import node_env, start_embedded_s3, store_urls
    from peers.sim.scenario import Scenario

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(var, "restored after the test")  # node_env sets them for this process too
    server, port = start_embedded_s3()
    try:
        urls = store_urls(Scenario(out=tmp_path, storage="embedded-s3"), ["validator", "honest-0"], port)
        assert urls["honest-0"] == f"s3://gauntlet-honest-0?endpoint_url=http://127.0.0.1:{port}&region=us-east-1"
        env = node_env(True, urls)  # creates the buckets
        assert env["OMP_NUM_THREADS"] == "1" and env["AWS_ACCESS_KEY_ID"] == "simulation"
        writer = open_store(urls["honest-0"], access_key=env["AWS_ACCESS_KEY_ID"],
                            secret_key=env["AWS_SECRET_ACCESS_KEY"])
        writer.put("runs/r/probe", b"a message")
        assert open_store(urls["honest-0"], read_only=True).get("runs/r/probe") == b"a message"
        assert list(open_store(urls["validator"]).list()) == []  # its own, empty bucket
    finally:
        server.stop()
