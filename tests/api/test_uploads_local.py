"""Direct transfers on the local blob store: not offered (409, a link without a URL), and the
SDK falls back to the streamed upload and download with the same result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nimbus.client import Client
from nimbus.config import Settings
from tests.api.conftest import API, csv_bytes, error_of
from tests.helpers import ServerProcess


def test_a_local_store_offers_no_direct_transfers(
    shared_server: ServerProcess, token_for: Callable[..., str], tmp_path: Path
) -> None:
    token = token_for("member", "local-direct")
    with shared_server.client(token) as http:
        response = http.post(f"{API}/datasets/d/uploads", json={"filename": "d.csv", "size": 10})
        assert response.status_code == 409
        error = error_of(response)
        assert error["code"] == "direct_transfers_unavailable"
        assert "/api/v1/datasets/{name}/versions" in error["message"]
        assert http.get(f"{API}/uploads/{'0' * 32}").status_code == 409
    source = tmp_path / "reviews.csv"
    source.write_bytes(csv_bytes("local-direct"))
    settings = Settings(home=tmp_path / "client", direct_min_bytes=1)
    with Client(shared_server.url, token, settings=settings) as api:
        version = api.upload_dataset("reviews", source)  # falls back to streaming
        with shared_server.client(token) as http:
            link = http.get(f"{API}/datasets/reviews/versions/1/files/source/link").json()
        assert link["url"] is None and link["sha256"] == version.source_hash
        api.download_dataset("reviews", tmp_path / "out")
    assert (tmp_path / "out" / "reviews.csv").read_bytes() == source.read_bytes()
