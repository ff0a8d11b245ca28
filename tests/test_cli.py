import json

from peers.cli import main
from wire_helpers import message


def test_inspect_reports_a_valid_message(tmp_path, cfg, alice, capsys):
    path = tmp_path / "msg.safetensors"
    path.write_bytes(message(cfg, alice, window=7, run="run-a"))
    assert main(["inspect", str(path), "--json", "--run", "run-a", "--window", "7"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["window"] == 7 and out["hotkey"] == alice.hotkey and out["signed"] is True
    sparse = next(t for t in out["tensors"] if t["name"] == "attn.weight")
    assert sparse["kind"] == "sparse" and sparse["density"] == 64 / 4096
    assert main(["inspect", str(path)]) == 0  # the table form
    assert "signature verified" in capsys.readouterr().out


def test_inspect_exits_2_on_invalid_and_1_on_unreadable(tmp_path, cfg, alice, capsys):
    path = tmp_path / "msg.safetensors"
    path.write_bytes(message(cfg, alice)[:-3])
    assert main(["inspect", str(path)]) == 2
    assert "invalid message" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "none")]) == 1


def test_logging_flags_set_gauntlets_and_the_libraries_levels():
    import logging

    from peers.cli import build_parser
    from peers.cli.flags import log_levels

    assert log_levels() == (logging.INFO, logging.INFO)
    assert log_levels(quiet=True) == (logging.WARNING, logging.WARNING)
    assert log_levels(debug=True) == (logging.INFO, logging.DEBUG)  # gauntlet's lines only
    assert log_levels(quiet=True, debug=True) == (logging.WARNING, logging.DEBUG)  # what other ranks get
    assert log_levels(trace=True) == (logging.DEBUG, logging.DEBUG)  # boto3, urllib3, torch too
    for command in ("peer", "validate"):
        args = build_parser().parse_args([command, "--storage", "file:///tmp/x", "--logging.debug", "--logging.trace"])
        assert args.log_debug and args.log_trace
