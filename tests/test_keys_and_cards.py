import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gauntlet.errors import InvalidCommitment
from gauntlet.storage import BucketCard, check_card_endpoint, keys

HK = "5DJ3SyKbetjtJ1xWZAnuBvdjJP6J4JnDqcR3h7kRx9QnjamY"


def test_key_layout_is_exactly_as_documented():
    assert keys.message("run1", 42, HK) == f"runs/run1/windows/0000000042/messages/{HK}.safetensors"
    assert keys.fingerprint("run1", 42, HK) == f"runs/run1/windows/0000000042/fingerprints/{HK}.json"
    assert keys.replay("run1", 42) == "runs/run1/windows/0000000042/replay.json"
    assert keys.peer_list("run1", 42) == "runs/run1/windows/0000000042/peers.json"
    assert keys.record("run1", 42) == "runs/run1/windows/0000000042/record.json"
    assert keys.checkpoint("run1", 42) == "runs/run1/checkpoints/0000000042.safetensors"


def test_keys_parse_back_and_sort_by_window():
    for key, kind in [(keys.message("r", 7, HK), "message"), (keys.checkpoint("r", 9), "checkpoint"),
                      (keys.record("r", 3), "record"), (keys.replay("r", 3), "replay")]:
        parsed = keys.parse(key)
        assert parsed.kind == kind and parsed.run == "r"
    assert keys.parse(keys.message("r", 7, HK)).hotkey == HK and keys.parse(keys.message("r", 7, HK)).window == 7
    assert keys.parse("runs/r/other") is None
    assert sorted(keys.record("r", w) for w in (10, 9, 100)) == [keys.record("r", w) for w in (9, 10, 100)]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 129, "sp ace"])
def test_keys_refuse_unsafe_segments(bad):
    with pytest.raises(ValueError):
        keys.message(bad, 1, HK)
    with pytest.raises(ValueError):
        keys.message("r", 1, bad)


R2 = BucketCard("s3", "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com", "b" * 32, "auto",
                "k" * 32, "s" * 64)


def test_card_round_trips_compactly_and_prints_no_secret():
    data = R2.encode()
    assert len(data) == 3 + 6 + len("s3") + 65 + 32 + 4 + 32 + 64 == 208  # two 128-byte chain fields
    assert BucketCard.decode(data) == R2
    assert "s" * 64 not in repr(R2)
    assert R2.store_url() == ("s3://" + "b" * 32 + "?endpoint_url=https://0123456789abcdef0123456789abcdef"
                              ".r2.cloudflarestorage.com&region=auto")
    assert BucketCard("file", "/tmp/peer-a").store_url() == "file:///tmp/peer-a"
    noted = BucketCard("file", "/v", note="record:9:" + "ab" * 32)
    assert BucketCard.decode(noted.encode()) == noted
    assert len(noted.encode()) == len(BucketCard("file", "/v").encode()) + 1 + 73


def test_cards_over_the_commitment_limit_are_refused():
    with pytest.raises(ValueError, match="384"):
        BucketCard("s3", "https://" + "e" * 200, "b" * 60, "r", "k" * 60, "s" * 60).encode()


@pytest.mark.parametrize("data, fragment", [
    (b"XX\x01", "magic"), (b"GC\x02", "version"), (R2.encode()[:-1], "truncated"),
    (R2.encode() + b"\x00", "trailing"), (BucketCard("ftp", "/x").encode(), "scheme"),
    (BucketCard("s3", "https://e").encode(), "bucket name"), (BucketCard("file", "rel").encode(), "absolute"),
    (b"G" * 400, "384"),
])
def test_malformed_cards_raise_invalid_commitment(data, fragment):
    with pytest.raises(InvalidCommitment, match=fragment):
        BucketCard.decode(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.builds(
    lambda bucket, key, cut: BucketCard("s3", "", bucket, "", key, "secret").encode()[:cut or None],
    st.text(min_size=1, max_size=30), st.text(max_size=30), st.integers(0, 60))))
def test_any_bytes_decode_to_a_card_or_a_typed_error(data):
    """Random bytes, and cards (some cut short, some with fields a card refuses): a card that decodes
    is exactly the bytes it came from, anything else is an InvalidCommitment."""
    try:
        card = BucketCard.decode(data)
    except InvalidCommitment:
        return
    assert card.encode() == data and card.scheme in ("s3", "file")


@pytest.mark.parametrize("location", ["http://s3.example.com", "https://127.0.0.1:9000", "https://10.0.0.8",
                                      "https://169.254.169.254", "https://localhost:9000", "https://[::1]"])
def test_card_endpoints_aimed_at_private_or_plain_http_targets_are_refused(location):
    card = BucketCard("s3", location, "bucket")
    with pytest.raises(InvalidCommitment):
        check_card_endpoint(card)
    check_card_endpoint(card, allow_local=True)  # local simulations opt in


def test_public_https_and_default_endpoints_are_accepted():
    check_card_endpoint(R2)
    check_card_endpoint(BucketCard("s3", "", "bucket", "us-east-1"))
    with pytest.raises(InvalidCommitment, match="local simulation"):
        check_card_endpoint(BucketCard("file", "/tmp/x"))
