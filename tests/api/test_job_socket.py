"""The job API socket's gate (nimbus.api.job_socket): by the ASGI scope alone."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from nimbus.api.job_socket import JobApiOnly, over_unix_socket


def call(scope: dict[str, Any]) -> int:
    """The status JobApiOnly answers (200: it passed the request on)."""
    sent: list[MutableMapping[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(JobApiOnly(app)({"type": "http", **scope}, receive, send))
    return int(sent[0]["status"])


def test_over_tcp_everything_passes() -> None:
    assert call({"server": ("127.0.0.1", 8600), "path": "/api/v1/tokens"}) == 200


def test_over_a_unix_socket_only_the_job_api_passes() -> None:
    unix = ("/srv/nimbus/run/job-api.sock", None)
    assert call({"server": unix, "path": "/api/v1/job-api/att_1/spec"}) == 200
    for path in ("/api/v1/tokens", "/healthz", "/api/v1/job-api", "/docs", "/"):
        assert call({"server": unix, "path": path}) == 404, path


def test_an_unknown_server_address_is_treated_as_the_socket() -> None:
    assert over_unix_socket({"type": "http"}) and over_unix_socket({"server": None})
    assert call({"path": "/api/v1/tokens"}) == 404
