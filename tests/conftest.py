import os
import tempfile

# The bittensor SDK fixes its cache paths (~/.bittensor) when imported: isolate HOME before any test
# module imports it, so the suite never reads or writes the user's real bittensor files.
os.environ["HOME"] = tempfile.mkdtemp(prefix="gauntlet-test-home-")

import pytest  # noqa: E402
import torch  # noqa: E402

from gauntlet.config import SparseLoCoConfig  # noqa: E402
from gauntlet.identity import Identity  # noqa: E402
from s3_servers import FaultProxy, free_port  # noqa: E402


# One intra-op thread: the tests' models are small, and two threads on a machine whose other core is
# busy wait on each other at every operation (measured: 2x slower than one thread under that load).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def cfg() -> SparseLoCoConfig:
    return SparseLoCoConfig()


@pytest.fixture(scope="session")
def alice() -> Identity:
    return Identity.from_seed("alice")


@pytest.fixture(scope="session")
def bob() -> Identity:
    return Identity.from_seed("bob")


@pytest.fixture(scope="session")
def moto_port():
    """moto's threaded S3 server on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield port
    server.stop()


@pytest.fixture
def fault_proxy(moto_port):
    proxy = FaultProxy(moto_port)
    yield proxy
    proxy.close()


@pytest.fixture(autouse=True)
def _fake_aws_credentials(monkeypatch):
    """moto accepts any credentials; never let a test find real ones."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
