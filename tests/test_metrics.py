"""Live metrics and health: the Prometheus endpoint, /healthz, and Weights & Biases in offline mode."""

import time
import urllib.error
import urllib.request

import pytest

from gauntlet.config import DataConfig
from gauntlet.data import prepare
from gauntlet.identity import Identity
from live_nodes import Nodes, pending_chain
from peers.ops.metrics import MetricsServer, NodeMetrics
from s3_servers import free_port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, name: str, label: str | None = None) -> float | None:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name or (label is not None and key.startswith(name + "{") and label in key):
            return float(value)
    return None


def test_metrics_and_health_endpoints_say_whether_the_node_keeps_up():
    metrics = NodeMetrics("peer", "5Fabc")
    seen = []
    metrics.sink = lambda w, values: seen.append((w, values))
    server = MetricsServer(metrics, 0)
    try:
        assert get(server.port, "/healthz") == (200, "starting: the chain's clock is not known yet\n")
        now = time.time()
        metrics.set_clock(now - 10 * 60.0 - 1, 60.0)  # the chain is in window 10
        metrics.val_loss.set(3.25)
        metrics.finished(3, seconds=12.5)
        code, text = get(server.port, "/healthz")
        assert code == 503 and text.startswith("5 window(s) behind: finished window 3 while the chain is in window 10")
        metrics.finished(8)
        assert get(server.port, "/healthz")[0] == 200
        metrics.set_phase("training")
        metrics.gathered.labels("ok").inc(3)
        code, text = get(server.port, "/metrics")
        assert code == 200
        assert sample(text, "gauntlet_window") == 8.0 and sample(text, "gauntlet_validation_loss") == 3.25
        assert sample(text, "gauntlet_phase", 'phase="training"') == 1.0
        assert sample(text, "gauntlet_phase", 'phase="waiting"') == 0.0
        assert sample(text, "gauntlet_gather_total", 'outcome="ok"') == 3.0
        assert get(server.port, "/other")[0] == 404
        assert seen[0] == (3, {"validation_loss": 3.25, "upload_bytes": 0.0, "upload_seconds": 0.0,
                               "outer_step_seconds": 0.0, "state_save_seconds": 0.0, "state_bytes": 0.0,
                               "window_seconds": 12.5, "chain_window": 0.0, "bucket_window_bytes": 0.0})
        metrics.set_standing(own_final_score=0.25, incentive=0.5, emission=1000)  # a peer's, once read
        metrics.finished(9)
        assert {k: v for k, v in seen[-1][1].items() if k in ("own_final_score", "incentive", "emission")} == \
            {"own_final_score": 0.25, "incentive": 0.5, "emission": 1000.0}
        assert sample(get(server.port, "/metrics")[1], "gauntlet_incentive") == 0.5
    finally:
        server.close()


SETTINGS = ["inner.steps=4", "train.batch_size=4", "data.seq_len=64", "inner.warmup_steps=2",
            "timing.blocks_per_window=40", "timing.upload_slot_s=1.0", "timing.slot_grace_s=0.3",
            "timing.gather_timeout_s=10", "train.eval_batches=1", "validator.eval_peers=2"]


@pytest.mark.slow
def test_a_live_peer_and_validator_serve_metrics_that_move(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    data_dir = tmp_path / "data"
    prepare(DataConfig(seq_len=64), data_dir)
    names = ["peer-a", "val"]
    url, chain = pending_chain(tmp_path / "chain.db", [Identity.from_seed("peer-a").hotkey], 0.1,
                               validators=[Identity.from_seed("val").hotkey])
    nodes = Nodes(tmp_path, data_dir, url, SETTINGS)
    ports = {"peer-a": free_port(), "val": free_port()}
    try:
        nodes.launch("peer-a", extra=["--metrics.port", str(ports["peer-a"]), "--wandb.project", "gauntlet-test"])
        nodes.launch("val", role="validator", extra=["--metrics.port", str(ports["val"])])
        nodes.start_when_ready(chain, names)

        def scraped(name: str) -> str:
            try:
                return get(ports[name], "/metrics")[1]
            except OSError:
                return ""

        nodes.wait_for(lambda: (sample(scraped("peer-a"), "gauntlet_window") or -1) >= 1, "the peer's window 1")
        first = scraped("peer-a")
        nodes.wait_for(lambda: (sample(scraped("peer-a"), "gauntlet_window") or -1) >= 3, "the peer's window 3")
        nodes.wait_for(lambda: (sample(scraped("val"), "gauntlet_window") or -1) >= 2, "the validator's window 2")
        later, val = scraped("peer-a"), scraped("val")
        assert sample(later, "gauntlet_window") > sample(first, "gauntlet_window")
        assert sample(later, "gauntlet_uploads_total") > sample(first, "gauntlet_uploads_total") >= 1
        assert sample(later, "gauntlet_upload_bytes") > 1000 and sample(later, "gauntlet_validation_loss") > 0
        assert sample(later, "gauntlet_state_bytes") > 0 and sample(later, "gauntlet_state_save_seconds") > 0
        assert sample(later, "gauntlet_gather_total", 'outcome="ok"') >= 1
        hotkey = Identity.from_seed("peer-a").hotkey
        assert sample(val, "gauntlet_peer_final_score", hotkey) is not None
        assert sample(val, "gauntlet_outer_step_seconds") > 0
        for name in names:  # a window can run long on a busy machine: healthy again by the next one
            nodes.wait_for(lambda n=name: get(ports[n], "/healthz")[0] == 200, f"{name} to report healthy")
        nodes.stop()
    finally:
        nodes.close()
    runs = list((nodes.run_dir("peer-a") / "wandb").glob("offline-run-*/*.wandb"))
    assert runs and runs[0].stat().st_size > 0  # the offline run, for a later `wandb sync`
