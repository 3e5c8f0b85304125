"""The control plane's own limits, against a real server: log streams per token, and the
audit log's rate limit on anonymous refusals and its retention."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from nimbus.db import audit as audit_repo
from nimbus.db.engine import Database
from nimbus.db.tables import AuditEvent
from tests.api.conftest import API, csv_bytes, error_of, make_token
from tests.helpers import ServerProcess

STREAMS = 3
REFUSED_ROWS = 4
SERVER_ENV = {
    "NIMBUS_SCHEDULER_ENABLED": "false",  # jobs stay queued: their log streams stay open
    "NIMBUS_MAX_LOG_STREAMS_PER_TOKEN": str(STREAMS),
    "NIMBUS_AUDIT_REFUSED_PER_MINUTE": str(REFUSED_ROWS),
    "NIMBUS_AUDIT_RETENTION_DAYS": "1",
    "NIMBUS_AUDIT_SWEEP_SECONDS": "0.3",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("control") / "home", env=SERVER_ENV) as proc:
        yield proc


@pytest.fixture(scope="module")
def job_id(server: ServerProcess) -> str:
    with server.client() as admin:
        uploaded = admin.post(
            f"{API}/datasets/streamed/versions", params={"filename": "s.csv"}, content=csv_bytes()
        )
        assert uploaded.status_code == 201, uploaded.text
        job = admin.post(f"{API}/jobs", json={"dataset": "streamed", "model": "text"})
        assert job.status_code == 201, job.text
        return str(job.json()["id"])


def open_stream(stack: contextlib.ExitStack, client: httpx.Client, job_id: str) -> httpx.Response:
    return stack.enter_context(
        client.stream("GET", f"{API}/jobs/{job_id}/logs", params={"follow": "true"})
    )


def test_log_streams_per_token_are_limited(server: ServerProcess, job_id: str) -> None:
    viewer = server.client(make_token(server, "viewer"))
    with contextlib.ExitStack() as streams:
        held = [open_stream(streams, viewer, job_id) for _ in range(STREAMS)]
        assert all(r.status_code == 200 for r in held)
        refused = viewer.get(f"{API}/jobs/{job_id}/logs", params={"follow": "true"})
        assert refused.status_code == 429, refused.text
        error = error_of(refused)
        assert error["code"] == "too_many_requests"
        assert f"NIMBUS_MAX_LOG_STREAMS_PER_TOKEN={STREAMS}" in error["message"]
        # The same token's other calls, and another token's streams, go on.
        assert viewer.get(f"{API}/jobs/{job_id}/logs").status_code == 200
        other = server.client(make_token(server, "viewer"))
        assert open_stream(streams, other, job_id).status_code == 200
        # A stream the client closes gives its slot back.
        held[0].close()
        deadline = time.monotonic() + 10
        while True:
            again = viewer.get(f"{API}/jobs/{job_id}")
            assert again.status_code == 200
            with viewer.stream(
                "GET", f"{API}/jobs/{job_id}/logs", params={"follow": "true"}
            ) as retry:
                if retry.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed stream's slot was never freed"
            time.sleep(0.2)


def test_many_streams_do_not_slow_the_api(server: ServerProcess, job_id: str) -> None:
    """A viewer asking for 200 streams holds only the limit's worth: the rest are refused
    at once, and other calls stay fast."""
    viewer = server.client(make_token(server, "viewer"))
    with contextlib.ExitStack() as streams:
        answers = []
        for _ in range(200):
            response = open_stream(streams, viewer, job_id)
            answers.append(response.status_code)
            if response.status_code != 200:
                response.close()
        assert answers.count(200) == STREAMS and answers.count(429) == 200 - STREAMS
        with server.client() as admin:
            took = []
            for _ in range(20):
                started = time.perf_counter()
                assert admin.get(f"{API}/jobs").status_code == 200
                took.append(time.perf_counter() - started)
        assert statistics.median(took) < 0.25, took


def operator_events(server: ServerProcess, limit: int = 1000) -> list[dict[str, Any]]:
    with server.client() as admin:
        response = admin.get(f"{API}/audit", params={"limit": limit})
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def test_anonymous_refusals_are_rate_limited_per_client(server: ServerProcess) -> None:
    path = f"{API}/datasets/flood/versions"
    with httpx.Client(base_url=server.url) as anonymous:
        # Start at the beginning of a minute, so all of them fall in one.
        time.sleep(max(0.0, 60 - time.time() % 60 + 0.2) if time.time() % 60 > 45 else 0)
        for _ in range(60):
            assert anonymous.post(path, content=b"x" * 500).status_code == 401
    deadline = time.monotonic() + 10
    while True:
        mine = [e for e in operator_events(server) if e["resource"] == path]
        summaries = [e for e in mine if "refused" in (e["detail"] or {})]
        if summaries and summaries[0]["detail"]["refused"] == 60 - REFUSED_ROWS:
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.2)
    assert len(mine) == REFUSED_ROWS + 1, mine  # not 60 rows
    summary = summaries[0]
    assert summary["status"] == 401 and summary["actor"] is None
    assert summary["detail"]["client"] == "127.0.0.1"
    assert summary["detail"]["minute"].endswith(":00Z")


def test_audit_events_past_the_retention_are_swept(server: ServerProcess) -> None:
    db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
    try:
        with db.session(write=True) as session:
            old = audit_repo.record(
                session,
                tenant_id=None,
                token_id=None,
                actor="ancient",
                action="POST",
                resource="/ancient",
                status=201,
            )
            old.created_at = datetime.now(UTC) - timedelta(days=2)
            old_id = old.id
        with server.client() as admin:
            assert admin.post(f"{API}/tokens", json={"name": "recent"}).status_code == 201
        deadline = time.monotonic() + 30  # sweeps every 0.3 s; a loaded machine is slow
        while True:
            with db.session() as session:
                if session.get(AuditEvent, old_id) is None:
                    break
            assert time.monotonic() < deadline, f"never swept:\n{server.log()[-3000:]}"
            time.sleep(0.2)
        assert any(e["resource"] == f"{API}/tokens" for e in operator_events(server))
    finally:
        db.dispose()
