"""Upload size limits: 413 up front or while streaming, and nothing left behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import API, blob_files, csv_bytes, error_of, stray_files
from tests.helpers import ServerProcess

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("limits") / "home"
    with ServerProcess(home, env={"NIMBUS_MAX_UPLOAD_BYTES": str(LIMIT)}) as server:
        yield server


def test_declared_length_over_the_limit(small_server: ServerProcess) -> None:
    with small_server.client() as admin:
        response = admin.post(
            f"{API}/datasets/big/versions", params={"filename": "b.csv"}, content=b"x" * (LIMIT + 1)
        )
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"
    assert stray_files(small_server.home) == [] and blob_files(small_server.home) == set()


def test_streamed_body_over_the_limit(small_server: ServerProcess) -> None:
    def body() -> Iterator[bytes]:  # chunked: the server only learns the size by reading
        for _ in range(8):
            yield b"y" * (16 * 1024)

    with small_server.client() as admin:
        response = admin.post(
            f"{API}/datasets/big/versions", params={"filename": "b.csv"}, content=body()
        )
        assert response.status_code == 413, response.text
        assert error_of(response)["code"] == "payload_too_large"
        assert admin.get(f"{API}/datasets/big").status_code == 404
        # The server is fine afterwards, and a body under the limit goes through.
        ok = admin.post(
            f"{API}/datasets/small/versions",
            params={"filename": "s.csv"},
            content=csv_bytes("small"),
        )
        assert ok.status_code == 201, ok.text
    assert stray_files(small_server.home) == []
    assert len(blob_files(small_server.home)) == len(
        {f["key"] for f in ok.json()["files"].values()}
    )


def test_refused_before_auth_leaks_nothing(small_server: ServerProcess) -> None:
    response = httpx.post(
        f"{small_server.url}{API}/datasets/x/versions?filename=a.csv", content=b"z" * (LIMIT * 2)
    )
    assert response.status_code == 401
    assert stray_files(Path(small_server.home)) == []
