import pytest
import torch

from gauntlet.config import SparseLoCoConfig
from gauntlet.identity import Identity


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
