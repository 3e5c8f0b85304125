"""Helpers for driving a real server over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ServerProcess

API = "/api/v1"


def csv_bytes(tag: str = "", rows: int = 40) -> bytes:
    """A small valid text-classification CSV; ``tag`` makes its content unique."""
    lines = ["text,label"]
    for i in range(rows):
        label = "pos" if i % 2 else "neg"
        lines.append(f"review {tag} number {i} was {'great' if i % 2 else 'awful'},{label}")
    return ("\n".join(lines) + "\n").encode()


def stray_files(home: Path) -> list[Path]:
    """Temporary files an upload could leave: in NIMBUS_HOME/tmp and the blob store's
    staging directory."""
    places = [home / "tmp", home / "blobs" / ".tmp"]
    return [p for d in places if d.exists() for p in d.rglob("*") if p.is_file()]


def blob_files(home: Path) -> set[Path]:
    return {p for p in (home / "blobs" / "sha256").rglob("*") if p.is_file()}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON error body; fails the test if the body is not the error shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"], body
    return dict(body["error"])


def make_token(server: ServerProcess, role: str = "member", tenant: str | None = None) -> str:
    body: dict[str, Any] = {"name": f"{role}-{tenant or 'default'}", "role": role}
    if tenant is not None:
        body["tenant"] = tenant
    with server.client() as admin:
        response = admin.post(f"{API}/tokens", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


@pytest.fixture(scope="module")
def token_for(shared_server: ServerProcess) -> Callable[..., str]:
    """``token_for(role, tenant)``: a new token on the module's shared server."""

    def make(role: str = "member", tenant: str | None = None) -> str:
        return make_token(shared_server, role, tenant)

    return make
