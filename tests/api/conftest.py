"""Helpers for driving a real server over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.jobs.capacity import Capacity
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


def start_attempt(server: ServerProcess, dataset: str) -> tuple[str, str]:
    """Submit a ``text`` job on ``dataset`` to a server whose scheduler is off, and start its
    attempt as a scheduler would: the attempt id and its job token. The job goes first in
    line, before any other job left queued."""
    with server.client() as admin:
        body = {"dataset": dataset, "model": "text", "priority": 1000}
        job = admin.post(f"{API}/jobs", json=body)
        assert job.status_code == 201, job.text
    db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
    try:
        with db.session(write=True) as session:
            claims = repo.claim_next(
                session,
                capacity=Capacity(cpus=64, gpus=8, memory_bytes=1 << 40),
                owner="test-node",
                now=datetime.now(UTC) + timedelta(seconds=5),
                lease_seconds=600,
                limit=1,
            )
    finally:
        db.dispose()
    assert [c.job.id for c in claims] == [job.json()["id"]]
    return claims[0].attempt.id, claims[0].token
