"""Write keys never leave the node that owns them: a whole live simulation is scanned for them.

The live network is the one ``tests/test_simulate.py`` runs (one live run serves both tests); this
module holds the scan."""

from pathlib import Path

from gauntlet.storage.s3_store import S3Store
from peers.sim.live import READ_SECRET


def occurrences(blob: bytes, secrets: dict[str, bytes]) -> set[str]:
    return {name for name, s in secrets.items() if s in blob}


def assert_no_write_key_leaked(out: Path, buckets: list[S3Store], secrets: dict[str, bytes]) -> None:
    """No file of a simulation's output and no object in its nodes' buckets holds a write key; the
    published read-only secret is in the chain database (the scan does look where cards live)."""
    leaks: dict[str, set[str]] = {}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "chain.db" for p in files) and any(p.suffix == ".log" for p in files)
    for path in files:  # logs, records, metrics, state files, the chain database, plots, report
        if found := occurrences(path.read_bytes(), secrets):
            leaks[str(path.relative_to(out))] = found
    objects = 0
    for store in buckets:  # messages, fingerprints, records, aggregates, checkpoints, lists
        for info in store.list():
            objects += 1
            if found := occurrences(store.get(info.key), secrets):
                leaks[f"s3://{store.bucket}/{info.key}"] = found
    assert objects >= 3 * 2, "the nodes stored almost nothing: the scan would prove nothing"
    assert not leaks, f"write keys leaked into: {leaks}"
    chain_db = b"".join(p.read_bytes() for p in out.rglob("chain.db*"))
    assert READ_SECRET.encode() in chain_db


def test_the_scan_finds_a_write_key_wherever_it_is(tmp_path):
    secrets = {"write secret": b"write-secret-123"}
    (tmp_path / "node.log").write_bytes(b"... write-secret-123 ...")
    assert occurrences((tmp_path / "node.log").read_bytes(), secrets) == {"write secret"}
    assert occurrences(b"nothing here", secrets) == set()
