"""The benchmark scripts run end to end and report what the issue asks for (no timings asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_convergence_reports_loss_and_bytes_per_method_and_h(tmp_path):
    out = subprocess.run(
        [sys.executable, "benchmarks/convergence.py", "--steps", "2", "--h", "1,2", "--seeds", "0,1", "--batch", "1",
         "--replicas", "2", "--methods", "ddp,diloco,sparseloco,topk_no_ef,dense_8bit", "--json", "--no-save",
         "--log", str(tmp_path / "runs.jsonl"), "--threads", "1", "--eval-sequences", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout.splitlines()[0])
    res = result["results"]
    assert set(res) == {"ddp", "diloco", "sparseloco", "topk_no_ef", "dense_8bit"}
    for method, by_h in res.items():
        assert set(by_h) == {"1", "2"}, method
        for h, cell in by_h.items():
            assert {"final_loss_mean", "final_loss_std", "seeds", "bytes_per_outer_step"} <= set(cell)
            assert cell["seeds"] == [0, 1] and cell["final_loss_std"] >= 0 and cell["steps"] == 2
            # a point before training and after every outer step (DDP: every min(H) steps)
            assert cell["curve_steps"] == ([0, 1, 2] if method == "ddp" or h == "1" else [0, 2])
            assert all(lo <= m <= hi for lo, m, hi in zip(cell["curve_min"], cell["curve_mean"], cell["curve_max"]))
    for h in ("1", "2"):
        dense = res["diloco"][h]["bytes_per_outer_step"]
        assert res["sparseloco"][h]["bytes_per_outer_step"] * 100 < dense  # ≥ 100x fewer than fp32 Δ
        assert res["sparseloco"][h]["bytes_per_outer_step"] == res["topk_no_ef"][h]["bytes_per_outer_step"]
        assert dense / 5 < res["dense_8bit"][h]["bytes_per_outer_step"] < dense / 3  # one byte per value
    assert res["ddp"]["2"]["bytes_per_outer_step"] == 2 * res["ddp"]["1"]["bytes_per_outer_step"]
    # the run log makes a second invocation skip every finished run
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (1 + 4 * 2)


def test_the_crossing_point_is_where_sparseloco_stays_below_diloco_for_good():
    from benchmarks.report_convergence import crossing

    diloco = {"curve_steps": [0, 15, 30, 45, 60], "curve_mean": [5.0, 3.0, 2.8, 2.7, 2.6]}
    dips_then_crosses = {"curve_steps": [0, 15, 30, 45, 60], "curve_mean": [5.0, 3.5, 2.7, 2.75, 2.5]}
    assert crossing(dips_then_crosses, diloco) == {"step": 60, "index": 3, "largest_gap_before": 0.5}
    below_from_30 = {"curve_steps": [0, 15, 30, 45, 60], "curve_mean": [5.0, 3.2, 2.8, 2.6, 2.5]}
    assert crossing(below_from_30, diloco) == {"step": 30, "index": 1, "largest_gap_before": pytest.approx(0.2)}
    assert crossing({"curve_steps": [0, 15, 60], "curve_mean": [5.0, 2.9, 2.7]}, diloco) is None  # ends above


def test_report_renders_every_saved_result(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/report.py", "--print"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.startswith("<!-- results:begin") and out.rstrip().endswith("<!-- results:end -->")
    assert "| benchmark | headline | result |" in out


def test_sharded_benchmark_halves_what_each_rank_holds_and_uploads_the_same_bytes():
    out = subprocess.run(
        [sys.executable, "benchmarks/sharded.py", "--model", "tiny", "--nproc", "1,2", "--inner-steps", "1",
         "--batch", "2", "--seq", "32", "--threads", "1", "--json", "--no-save"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout.splitlines()[0])
    one, two = result["runs"]
    assert (one["nproc"], two["nproc"]) == (1, 2) and len(two["ranks"]) == 2
    assert result["same_bytes_for_every_n"] and one["bytes_per_window"] == two["bytes_per_window"]
    # parameters + AdamW state + error feedback are sharded by rows: half per rank, up to uneven splits
    assert 0.45 < result["held_vs_first"]["2"] <= 0.55
    for run in (one, two):
        assert {"peak_rss_mb_per_rank", "window_s", "encode_s", "decode_apply_s"} <= set(run)
        assert all(r["held_mb"] == pytest.approx(r["params_mb"] + r["optimiser_mb"] + r["ef_mb"], abs=0.2)
                   for r in run["ranks"])


def test_state_save_benchmark_reports_peak_memory_and_held_bytes(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/state_save.py", "--model", "tiny", "--json", "--no-save",
                          "--dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout.splitlines()[0])
    assert {"peak_rss_mb", "held_mb", "load_peak_rss_mb", "before", "checkpoint_load", "goal_met"} <= set(r)
    assert r["file_mb"] >= r["held_mb"]  # every held tensor is in the file
    assert r["peak_rss_mb"] >= r["runtime_mb"] and not list(tmp_path.iterdir())  # the temporary files are gone


def test_bandwidth_benchmark_reports_each_nodes_bytes_and_the_validators_upload_before_and_now(tmp_path):
    record = {"v": 1, "window": 3, "peers": {f"5P{i}": {"status": "present", "score": 0.1} for i in range(4)},
              "aggregated": [f"5P{i}" for i in range(4)], "weights": {str(i): 0.25 for i in range(4)}}
    (tmp_path / "record.json").write_text(json.dumps(record))
    out = subprocess.run([sys.executable, "benchmarks/bandwidth.py", "--shapes", "tiny", "--peers", "8,30",
                          "--vocab", "256", "--record", str(tmp_path / "record.json"), "--json", "--no-save"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout.splitlines()[0])
    small, big = r["results"]["tiny"]["by_peers"]["8"], r["results"]["tiny"]["by_peers"]["30"]
    size = r["results"]["tiny"]["objects"]
    assert size["checkpoint"] > 4 * r["results"]["tiny"]["parameters"]  # fp32 and a header
    # a validator gathers every message; a peer the top G and the reserves (20 + 5)
    assert big["validator_download_bytes_per_window"] == 30 * (size["message"] + size["fingerprint"])
    assert big["peer_download_bytes_per_window"] == 25 * size["message"] + big["peer_list"]
    assert small["peer_download_bytes_per_window"] == 8 * size["message"] + small["peer_list"]
    for x in (small, big):
        assert x["validator_upload_bytes_per_window"] < x["validator_upload_bytes_per_window_before"]
        assert x["late_peer_download_bytes_per_replayed_window_before"] == size["checkpoint"]
    assert big["replay"] > small["replay"] and big["record_bytes"] > small["record_bytes"]
