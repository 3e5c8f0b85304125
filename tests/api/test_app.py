"""The app in-process: what a real server cannot easily be made to do (a bug -> 500)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.api.app import create_app
from nimbus.api.state import Services
from nimbus.config import Settings
from nimbus.server import bootstrap, build_services
from tests.api.conftest import API, error_of

Call = tuple[str, str, dict[str, Any]]


@pytest.fixture
def app_parts(tmp_path: Path) -> Iterator[tuple[Any, Services, str]]:
    settings = Settings(home=tmp_path / "home")
    secret = bootstrap(settings)
    assert secret is not None
    services = build_services(settings)
    yield create_app(services), services, secret
    services.db.dispose()


def send(app: Any, secret: str, *calls: Call) -> list[httpx.Response]:
    """Requests in order, through the ASGI app (no server, no lifespan)."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://nimbus", headers=headers
        ) as client:
            return [await client.request(m, url, **kw) for m, url, kw in calls]

    return asyncio.run(run())


def test_a_bug_is_a_json_500_and_is_audited(
    app_parts: tuple[Any, Services, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, services, secret = app_parts

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(services.datasets, "list_datasets", broken)
    monkeypatch.setattr(services.datasets, "delete_dataset", broken)
    listed, deleted, audit = send(
        app,
        secret,
        ("GET", f"{API}/datasets", {}),
        ("DELETE", f"{API}/datasets/x", {}),
        ("GET", f"{API}/audit", {}),
    )
    for response in (listed, deleted):
        assert response.status_code == 500
        assert error_of(response)["code"] == "internal" and "boom" not in response.text
    latest = audit.json()["events"][0]
    assert (latest["action"], latest["resource"], latest["status"]) == (
        "DELETE",
        f"{API}/datasets/x",
        500,
    )


def test_audit_failure_does_not_fail_the_request(
    app_parts: tuple[Any, Services, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, services, secret = app_parts

    def broken(*args: Any) -> None:
        raise RuntimeError("audit store down")

    monkeypatch.setattr(services.audit, "record", broken)
    [response] = send(app, secret, ("POST", f"{API}/tokens", {"json": {"name": "still-works"}}))
    assert response.status_code == 201
