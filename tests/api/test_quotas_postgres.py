"""Quotas under concurrent requests, on a server backed by PostgreSQL: each check and the
insert it allows are one step for the tenant (its row locked), so concurrent submits
cannot all pass the check and overshoot (READ COMMITTED would let them)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import API, csv_bytes, make_token
from tests.helpers import ServerProcess

REQUESTS = 12
ROUNDS = 3


@pytest.fixture
def server(tmp_path: Path, pg_url: str) -> Iterator[ServerProcess]:
    env = {"NIMBUS_DATABASE_URL": pg_url, "NIMBUS_SCHEDULER_ENABLED": "false"}
    with ServerProcess(tmp_path / "home", env=env) as proc:
        yield proc


def at_once(url: str, token: str, count: int, body: Mapping[str, object]) -> list[int]:
    """``count`` POSTs of ``body`` to ``url``, each on its own connection and thread,
    released together; their statuses."""
    start = threading.Barrier(count)
    statuses: list[int] = []

    def post() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            client.get(url.rsplit("/api/", 1)[0] + "/healthz")  # connected before the race
            start.wait()
            statuses.append(client.post(url, json=body).status_code)

    threads = [threading.Thread(target=post) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return statuses


def test_concurrent_submits_do_not_overshoot_the_jobs_quota(server: ServerProcess) -> None:
    token = make_token(server, "member", "racers")
    with server.client(token) as member, server.client() as operator:
        uploaded = member.post(
            f"{API}/datasets/reviews/versions", params={"filename": "d.csv"}, content=csv_bytes()
        )
        assert uploaded.status_code == 201, uploaded.text
        assert operator.put(f"{API}/quotas/racers", json={"jobs": 2}).status_code == 200
        body = {"dataset": "reviews", "model": "text"}
        for _ in range(ROUNDS):
            statuses = at_once(f"{server.url}{API}/jobs", token, REQUESTS, body)
            jobs = member.get(f"{API}/jobs").json()["jobs"]
            active = [j for j in jobs if j["state"] == "queued"]
            assert sorted(statuses) == [201] * 2 + [429] * (REQUESTS - 2), statuses
            assert len(active) == 2
            for job in active:
                assert member.post(f"{API}/jobs/{job['id']}/cancel").status_code == 200
