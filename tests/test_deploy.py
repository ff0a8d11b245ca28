"""The service recipes in deploy/ run real commands with real flags."""

import re
import shlex
from pathlib import Path

import pytest

from peers.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ENV = {"GAUNTLET_STORAGE": "s3://bucket?endpoint_url=https://s3.example.com&region=auto"}


def parses(argv: list[str]):
    return build_parser().parse_args(argv)


@pytest.mark.parametrize("unit", ["gauntlet-peer.service", "gauntlet-validator.service"])
def test_systemd_units_start_the_doctor_then_the_node_with_flags_that_exist(unit):
    text = (DEPLOY / unit).read_text()
    lines = {k: v for k, v in (line.split("=", 1) for line in text.splitlines() if line.startswith("Exec"))}
    assert set(lines) == {"ExecStartPre", "ExecStart"}
    for key, command in lines.items():
        argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: ENV[m.group(1)], command))
        assert argv[0].endswith("/gauntlet")
        args = parses(argv[1:])  # argparse exits on any unknown flag
        assert args.command == ("doctor" if key == "ExecStartPre" else "peer" if "peer" in unit else "validate")
    node = parses(shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: ENV[m.group(1)], lines["ExecStart"]))[1:])
    assert node.metrics_port and node.retain == 28  # checkpoint_every + 3
    assert node.manifest == "chain" and node.config is None  # the run comes from the owner's manifest
    assert "KillSignal=SIGTERM" in text and "EnvironmentFile=" in text


def test_the_pm2_ecosystem_runs_real_subcommands_with_real_flags():
    text = (DEPLOY / "ecosystem.config.js").read_text()
    common = re.findall(r'"([^"]*)"', re.search(r"const common = \[(.*?)\];", text, re.S).group(1))
    common.insert(common.index("--storage") + 1, ENV["GAUNTLET_STORAGE"])  # process.env.GAUNTLET_STORAGE
    apps = re.findall(r"args: \[(.*?)\.\.\.common\]", text, re.S)
    assert len(apps) == 2
    for block in apps:
        argv = re.findall(r'"([^"]*)"', block) + common
        args = parses(argv)
        assert args.command in ("peer", "validate") and args.metrics_port and args.manifest == "chain"


def test_operations_guide_names_every_metric_the_nodes_serve():
    from peers.ops.metrics import NodeMetrics

    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    names = {m.name for m in NodeMetrics("peer", "x").registry.collect()}
    missing = [n for n in names if f"`{n}" not in guide]
    assert not missing, f"docs/operations.md does not explain {missing}"
