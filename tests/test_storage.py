import threading
import uuid

import pytest

from gauntlet.errors import AccessDenied, ConfigError, ObjectNotFound, ObjectTooLarge, StorageError
from gauntlet.storage import FileStore, open_store
from gauntlet.storage.s3_store import S3Store


def s3_store(port: int, **kw) -> S3Store:
    store = S3Store(f"b-{uuid.uuid4().hex[:12]}", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1",
                    backoff_s=0.01, **kw)
    store.create_bucket()
    return store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return FileStore(tmp_path / "store")
    return s3_store(request.getfixturevalue("moto_port"))


def test_round_trip_head_list_and_delete(store):
    store.put("runs/a/x.bin", b"hello")
    store.put("runs/a/sub/y.bin", b"")
    store.put("runs/b/z.bin", b"z" * 1000)
    assert store.get("runs/a/x.bin") == b"hello" and store.get("runs/a/sub/y.bin") == b""
    info = store.head("runs/b/z.bin")
    assert info.size == 1000 and info.key == "runs/b/z.bin" and info.last_modified > 1.7e9
    assert store.head("runs/none") is None
    data, read_info = store.read("runs/b/z.bin")
    assert data == b"z" * 1000 and read_info.size == 1000 and abs(read_info.last_modified - info.last_modified) < 1
    assert [o.key for o in store.list("runs/a/")] == ["runs/a/sub/y.bin", "runs/a/x.bin"]
    assert [o.key for o in store.list("runs/")] == ["runs/a/sub/y.bin", "runs/a/x.bin", "runs/b/z.bin"]
    assert [o.key for o in store.list("runs/a/x")] == ["runs/a/x.bin"]
    assert store.list("nothing/") == []
    store.delete("runs/a/x.bin")
    store.delete("runs/a/x.bin")  # deleting twice is fine
    with pytest.raises(ObjectNotFound):
        store.get("runs/a/x.bin")


def test_delete_many_removes_every_key_in_batches(store, monkeypatch):
    keys = [f"runs/r/windows/{w}/x.bin" for w in range(2500)] if isinstance(store, S3Store) else \
        [f"runs/r/{i}.bin" for i in range(20)]
    for key in keys[:40] + keys[-3:]:
        store.put(key, b"x")
    requests = []
    if isinstance(store, S3Store):  # count DeleteObjects requests: 2,500 keys go in three
        store.client.meta.events.register("before-call.s3.DeleteObjects", lambda **kw: requests.append(1))
    store.delete_many(keys)  # most of them do not exist: not an error
    assert store.list("runs/") == []
    assert len(requests) == (3 if isinstance(store, S3Store) else 0)
    store.delete_many([])
    with pytest.raises(StorageError, match="invalid object key"):
        store.delete_many(["ok", "../escape"])


def test_keys_an_s3_server_refuses_to_delete_are_named_in_the_error(moto_port, monkeypatch):
    store = s3_store(moto_port)
    refused = {"Errors": [{"Key": "runs/r/a.bin", "Code": "AccessDenied", "Message": "locked"}]}
    monkeypatch.setattr(store.client, "delete_objects", lambda **kw: refused)
    with pytest.raises(StorageError, match="refused to delete 1 of 2 objects, e.g. runs/r/a.bin: AccessDenied"):
        store.delete_many(["runs/r/a.bin", "runs/r/b.bin"])


def test_overwrite_is_atomic_for_concurrent_readers(store):
    versions = [bytes([i]) * (1000 + 7919 * i) for i in range(6)]
    store.put("obj", versions[0])
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set() and len(seen) < 2000:
            seen.append(store.get("obj"))

    thread = threading.Thread(target=reader)
    thread.start()
    for _ in range(3):
        for v in versions[1:]:
            store.put("obj", v)
    stop.set()
    thread.join(timeout=60)
    assert seen and all(s in versions for s in seen)
    assert store.get("obj") == versions[-1]


def test_max_bytes_refuses_large_objects(store):
    store.put("big", b"x" * 5000)
    assert store.get("big", max_bytes=5000) == b"x" * 5000
    with pytest.raises(ObjectTooLarge, match="5000 bytes"):
        store.get("big", max_bytes=4999)
    with pytest.raises(ObjectNotFound):
        store.get("missing", max_bytes=10)


def test_read_only_stores_refuse_writes(store, tmp_path):
    store.put("k", b"v")
    ro = FileStore(store.root, read_only=True) if isinstance(store, FileStore) else S3Store(
        store.bucket, endpoint_url=store.endpoint_url, region="us-east-1", read_only=True)
    assert ro.get("k") == b"v"
    with pytest.raises(AccessDenied):
        ro.put("k", b"w")
    with pytest.raises(AccessDenied):
        ro.delete("k")
    with pytest.raises(AccessDenied):
        ro.delete_many(["k"])


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "sp ace", "", "a/b/", "é"])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(StorageError, match="invalid object key"):
        store.put(key, b"x")


# --------------------------------------------------------------------------- S3 fault handling


def test_max_bytes_is_checked_with_head_before_any_body_is_transferred(fault_proxy):
    store = s3_store(fault_proxy.port)
    store.put("big", b"x" * 5000)
    fault_proxy.reset()
    with pytest.raises(ObjectTooLarge):
        store.get("big", max_bytes=100)
    assert fault_proxy.requests == {"HEAD": 1}


def test_transient_server_errors_are_retried_then_succeed(fault_proxy):
    store = s3_store(fault_proxy.port, max_attempts=4)
    fault_proxy.reset()
    fault_proxy.fail_next(2, 503)
    store.put("k", b"v")
    assert fault_proxy.requests["PUT"] == 3
    fault_proxy.fail_next(3, 500)
    assert store.get("k") == b"v"
    assert fault_proxy.requests["GET"] == 4


def test_persistent_server_errors_give_up_after_max_attempts(fault_proxy):
    store = s3_store(fault_proxy.port, max_attempts=3)
    fault_proxy.reset()
    fault_proxy.fail_next(10, 502)
    with pytest.raises(StorageError, match="failed 3 times"):
        store.put("k", b"v")
    assert fault_proxy.requests["PUT"] == 3


@pytest.mark.parametrize("status, error", [(403, AccessDenied), (404, ObjectNotFound), (400, StorageError)])
def test_client_errors_are_never_retried(fault_proxy, status, error):
    store = s3_store(fault_proxy.port, max_attempts=4)
    store.put("k", b"v")
    fault_proxy.reset()
    fault_proxy.fail_next(1, status)
    with pytest.raises(error):
        store.get("k")
    assert fault_proxy.requests["GET"] == 1
    assert store.get("k") == b"v"  # the next call is not affected


def test_unreachable_endpoint_is_a_storage_error_after_bounded_retries():
    store = S3Store("b", endpoint_url=f"http://127.0.0.1:{_closed_port()}", region="us-east-1",
                    max_attempts=2, backoff_s=0.01, connect_timeout=1)
    with pytest.raises(StorageError, match="failed 2 times"):
        store.get("k")


def _closed_port() -> int:
    from s3_servers import free_port

    return free_port()


def test_large_uploads_go_up_in_parts(fault_proxy):
    store = s3_store(fault_proxy.port, multipart_threshold=6 << 20, multipart_chunksize=5 << 20)
    data = bytes(range(256)) * (11 << 12)  # 11 MiB → parts of 5, 5 and 1 MiB
    fault_proxy.reset()
    fault_proxy.fail_next(1, 503)  # the first request (start of the upload) fails once
    store.put("large", data)
    assert fault_proxy.requests["PUT"] == 3  # three parts
    assert fault_proxy.requests["POST"] == 3  # create (failed once, retried) + complete
    assert store.get("large") == data


# ------------------------------------------------------------------------------------- open_store


def test_open_store_understands_file_and_s3_urls(tmp_path, moto_port):
    fs = open_store(f"file://{tmp_path}/d")
    assert isinstance(fs, FileStore) and fs.root == (tmp_path / "d").resolve()
    s3 = open_store(f"s3://bkt?endpoint_url=http://127.0.0.1:{moto_port}&region=us-east-1", read_only=True)
    assert isinstance(s3, S3Store) and s3.bucket == "bkt" and s3.read_only


@pytest.mark.parametrize("url, fragment", [
    ("http://x/y", "unsupported"),
    ("file://relative/dir", "absolute"),
    ("s3://", "no bucket"),
    ("s3://b?secret_key=oops", "never in the URL"),
])
def test_open_store_rejects_bad_urls_helpfully(url, fragment):
    with pytest.raises(ConfigError, match=fragment):
        open_store(url)


def test_retries_are_botocores_standard_mode_or_adaptive_by_url(moto_port):
    store = s3_store(moto_port, max_attempts=3)
    assert store.client.meta.config.retries == {"total_max_attempts": 3, "mode": "standard"}
    adaptive = open_store(f"s3://{store.bucket}?endpoint_url=http://127.0.0.1:{moto_port}&region=us-east-1"
                          f"&retry_mode=adaptive")
    assert adaptive.client.meta.config.retries["mode"] == "adaptive"
    adaptive.put("k", b"v")
    assert adaptive.get("k", max_bytes=10) == b"v"
    with pytest.raises(ConfigError, match="retry_mode='eager': use one of standard, adaptive"):
        open_store(f"s3://b?endpoint_url=http://127.0.0.1:{moto_port}&retry_mode=eager")


def test_large_downloads_come_in_byte_ranges_and_a_broken_range_is_fetched_again(fault_proxy):
    store = s3_store(fault_proxy.port, multipart_threshold=6 << 20, multipart_chunksize=5 << 20, max_concurrency=1)
    data = bytes(range(256)) * (11 << 12)  # 11 MiB → ranges of 5, 5 and 1 MiB
    store.put("large", data)
    fault_proxy.reset()
    assert store.get("large", max_bytes=len(data)) == data
    assert fault_proxy.requests["GET"] == 3
    fault_proxy.reset()
    fault_proxy.corrupt_next_get(1, "truncate")  # the first range breaks off half-way
    assert store.get("large", max_bytes=len(data)) == data
    assert fault_proxy.requests["GET"] == 4
    with pytest.raises(ObjectTooLarge):
        store.get("large", max_bytes=len(data) - 1)


def test_put_file_stores_a_local_files_bytes_and_a_read_only_store_refuses_it(store, tmp_path):
    source = tmp_path / "local.bin"
    source.write_bytes(bytes(range(256)) * 1000)
    store.put_file("runs/r/checkpoints/big.bin", source)
    assert store.get("runs/r/checkpoints/big.bin", max_bytes=256_000) == source.read_bytes()
    ro = FileStore(store.root, read_only=True) if isinstance(store, FileStore) else S3Store(
        store.bucket, endpoint_url=store.endpoint_url, region="us-east-1", read_only=True)
    with pytest.raises(AccessDenied):
        ro.put_file("k", source)


def test_get_file_writes_an_objects_bytes_to_a_local_file_within_its_limit(store, tmp_path):
    data = bytes(range(256)) * 1000
    store.put("runs/r/checkpoints/0000000004.safetensors", data)
    info = store.get_file("runs/r/checkpoints/0000000004.safetensors", tmp_path / "got", max_bytes=len(data))
    assert (tmp_path / "got").read_bytes() == data and info.size == len(data)
    with pytest.raises(ObjectTooLarge):
        store.get_file("runs/r/checkpoints/0000000004.safetensors", tmp_path / "other", max_bytes=len(data) - 1)
    with pytest.raises(ObjectNotFound):
        store.get_file("runs/r/checkpoints/missing.safetensors", tmp_path / "other")


def test_get_file_downloads_byte_ranges_and_reads_again_bytes_that_fail_their_hash(fault_proxy, tmp_path):
    store = s3_store(fault_proxy.port, multipart_threshold=6 << 20, multipart_chunksize=5 << 20, max_concurrency=1)
    data = bytes(range(256)) * (11 << 12)  # 11 MiB → ranges of 5, 5 and 1 MiB
    store.put("large", data)
    fault_proxy.reset()
    store.get_file("large", tmp_path / "large", max_bytes=len(data))
    assert (tmp_path / "large").read_bytes() == data and fault_proxy.requests["GET"] == 3
    small = data[: 1 << 20]
    store.put("small", small)
    fault_proxy.reset()
    fault_proxy.swap_body = bytes(len(small))  # whole, the right length, and wrong: it fails its SHA-256
    fault_proxy.corrupt_next_get(1, "swap")
    store.get_file("small", tmp_path / "small", max_bytes=len(small))
    assert (tmp_path / "small").read_bytes() == small and fault_proxy.requests["GET"] == 2
