"""Read-only credentials enforced by a real, auth-enforcing S3 server (SeaweedFS ``weed mini``)."""

import pytest

from gauntlet.errors import AccessDenied
from gauntlet.storage import BucketCard, open_store, store_from_card
from s3_servers import WeedMini

BUCKET = "peer-bucket"


@pytest.fixture(scope="module")
def weed(tmp_path_factory):
    server = WeedMini(tmp_path_factory.mktemp("weed"), BUCKET)
    yield server
    server.close()


def test_write_key_writes_and_published_read_key_reads_but_cannot_write_or_delete(weed):
    url = f"s3://{BUCKET}?endpoint_url={weed.endpoint}&region=us-east-1"
    writer = open_store(url, access_key=weed.WRITER[0], secret_key=weed.WRITER[1], max_attempts=1)
    writer.put("runs/r/windows/0000000001/messages/peer.safetensors", b"update")

    card = BucketCard("s3", weed.endpoint, BUCKET, "us-east-1", *weed.READER)
    published = BucketCard.decode(card.encode())  # what others read from the chain
    reader = store_from_card(published, allow_local=True, max_attempts=1)
    assert reader.get("runs/r/windows/0000000001/messages/peer.safetensors") == b"update"
    assert [o.key for o in reader.list("runs/")] == ["runs/r/windows/0000000001/messages/peer.safetensors"]

    # The server itself refuses writes with the read key (bypassing the client-side guard):
    raw_reader = open_store(url, access_key=weed.READER[0], secret_key=weed.READER[1], max_attempts=1)
    with pytest.raises(AccessDenied):
        raw_reader.put("runs/r/forged", b"x")
    with pytest.raises(AccessDenied):
        raw_reader.delete("runs/r/windows/0000000001/messages/peer.safetensors")
    assert writer.get("runs/r/windows/0000000001/messages/peer.safetensors") == b"update"
    assert writer.head("runs/r/forged") is None


def test_a_wrong_secret_is_denied(weed):
    url = f"s3://{BUCKET}?endpoint_url={weed.endpoint}&region=us-east-1"
    impostor = open_store(url, access_key=weed.READER[0], secret_key="not-the-secret", max_attempts=1)
    with pytest.raises(AccessDenied):
        impostor.list("runs/")
