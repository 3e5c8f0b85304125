"""Per-tenant quotas and artifact limits through a real server: set by operators only,
refused with an error naming the quota and nothing stored, other tenants unaffected."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Claim
from tests.api.conftest import API, blob_files, csv_bytes, error_of, make_token, stray_files
from tests.helpers import ServerProcess
from tests.helpers_models import image_model_dir, insert_job

ARTIFACT_LIMIT = 4096
ARTIFACTS_PER_JOB = 2
SERVER_ENV = {
    "NIMBUS_SCHEDULER_ENABLED": "false",
    "NIMBUS_MAX_ARTIFACT_BYTES": str(ARTIFACT_LIMIT),
    "NIMBUS_MAX_ARTIFACTS_PER_JOB": str(ARTIFACTS_PER_JOB),
}
NODE = Capacity(cpus=64, gpus=8, memory_bytes=1 << 40)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("quotas") / "home", env=SERVER_ENV) as proc:
        yield proc


def client(server: ServerProcess, role: str, tenant: str | None = None) -> httpx.Client:
    return server.client(make_token(server, role, tenant))


def set_quota(server: ServerProcess, tenant: str, **limits: Any) -> dict[str, Any]:
    with server.client() as operator:
        response = operator.put(f"{API}/quotas/{tenant}", json=limits)
    assert response.status_code == 200, response.text
    return dict(response.json())


def upload(member: httpx.Client, name: str, data: bytes) -> httpx.Response:
    return member.post(
        f"{API}/datasets/{name}/versions", params={"filename": "d.csv"}, content=data
    )


def test_only_operators_set_quotas_and_admins_see_their_own(server: ServerProcess) -> None:
    tenant_admin = client(server, "admin", "qa")
    assert tenant_admin.put(f"{API}/quotas", json={"jobs": 100}).status_code == 403
    assert tenant_admin.put(f"{API}/quotas/qa", json={"jobs": 100}).status_code == 403
    assert tenant_admin.get(f"{API}/quotas/default").status_code == 403
    assert client(server, "member", "qa").get(f"{API}/quotas").status_code == 403
    shown = tenant_admin.get(f"{API}/quotas").json()
    assert shown["tenant"] == "qa" and shown["limits"]["jobs"] is None
    assert shown["usage"] == {"jobs": 0, "deployments": 0, "replicas": 0, "bytes": 0}
    set_quota(server, "qa", jobs=3, bytes=10_000)
    assert set_quota(server, "qa", deployments=1)["limits"] == {
        "jobs": 3,
        "deployments": 1,
        "replicas": None,
        "bytes": 10_000,
    }
    assert set_quota(server, "qa", jobs=None)["limits"]["jobs"] is None  # back to the default
    with server.client() as operator:
        assert operator.put(f"{API}/quotas/qa", json={"jobs": -1}).status_code == 400
        assert operator.put(f"{API}/quotas/qa", json={"cpus": 1}).status_code == 400
        assert operator.get(f"{API}/quotas/nosuchtenant").status_code == 404


def test_concurrent_jobs_quota(server: ServerProcess) -> None:
    member, other = client(server, "member", "qjobs"), client(server, "member", "qfree")
    for who in (member, other):
        assert upload(who, "reviews", csv_bytes("jobs")).status_code == 201
    set_quota(server, "qjobs", jobs=2)
    body = {"dataset": "reviews", "model": "text"}
    first = [member.post(f"{API}/jobs", json=body) for _ in range(2)]
    assert [r.status_code for r in first] == [201, 201]
    refused = member.post(f"{API}/jobs", json=body)
    assert refused.status_code == 429, refused.text
    error = error_of(refused)
    assert error["code"] == "quota_exceeded" and "concurrent jobs (2)" in error["message"]
    assert error["details"] == {"quota": "jobs", "limit": 2, "used": 2}
    assert len(member.get(f"{API}/jobs").json()["jobs"]) == 2  # nothing was queued
    # Another tenant is unaffected; a job that ends frees its place.
    assert all(other.post(f"{API}/jobs", json=body).status_code == 201 for _ in range(3))
    assert member.post(f"{API}/jobs/{first[0].json()['id']}/cancel").status_code == 200
    assert member.post(f"{API}/jobs", json=body).status_code == 201
    for who in (member, other):
        for job in who.get(f"{API}/jobs").json()["jobs"]:
            who.post(f"{API}/jobs/{job['id']}/cancel")


def test_storage_quota_refuses_datasets_and_code_and_stores_nothing(
    server: ServerProcess,
) -> None:
    member, other = client(server, "member", "qbytes"), client(server, "member", "qroomy")
    first = upload(member, "small", csv_bytes("first"))
    assert first.status_code == 201, first.text
    used = member_usage(server, "qbytes")
    assert used >= len(csv_bytes("first"))  # the source and its prepared arrays
    set_quota(server, "qbytes", bytes=used + 100)
    blobs, datasets = blob_files(server.home), member.get(f"{API}/datasets").json()
    refused = upload(member, "big", csv_bytes("second", rows=400))
    assert refused.status_code == 507, refused.text
    error = error_of(refused)
    assert error["code"] == "storage_quota_exceeded" and "storage quota" in error["message"]
    assert error["details"]["quota"] == "bytes"
    code = member.post(
        f"{API}/code", params={"filename": "train.py"}, content=b"print('hi')\n" * 20
    )
    assert code.status_code == 507 and error_of(code)["code"] == "storage_quota_exceeded"
    # Nothing of either was stored.
    assert blob_files(server.home) == blobs and stray_files(server.home) == []
    assert member.get(f"{API}/datasets").json() == datasets
    assert member_usage(server, "qbytes") == used
    # Another tenant stores the same as before.
    assert upload(other, "big", csv_bytes("second", rows=400)).status_code == 201


def member_usage(server: ServerProcess, tenant: str) -> int:
    with server.client() as operator:
        return int(operator.get(f"{API}/quotas/{tenant}").json()["usage"]["bytes"])


@contextlib.contextmanager
def running_attempt(server: ServerProcess, member: httpx.Client) -> Iterator[httpx.Client]:
    """A running attempt of a fresh job of ``member``'s tenant, as a scheduler starts it."""
    job = member.post(
        f"{API}/jobs", json={"dataset": "reviews", "model": "text", "priority": 1000}
    ).json()
    db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
    try:
        with db.session(write=True) as s:
            claims: list[Claim] = repo.claim_next(
                s,
                capacity=NODE,
                owner="test-node",
                now=datetime.now(UTC) + timedelta(seconds=5),
                lease_seconds=60,
                limit=1,
            )
        assert [c.job.id for c in claims] == [job["id"]]
        with httpx.Client(
            base_url=f"{server.url}{API}/job-api/{claims[0].attempt.id}",
            headers={"Authorization": f"Bearer {claims[0].token}"},
            timeout=30,
        ) as job_api:
            yield job_api
    finally:
        member.post(f"{API}/jobs/{job['id']}/cancel")
        db.dispose()


def test_artifact_size_and_count_limits_and_the_storage_quota(server: ServerProcess) -> None:
    member = client(server, "member", "qart")
    assert upload(member, "reviews", csv_bytes("art")).status_code == 201
    with running_attempt(server, member) as job_api:
        blobs = blob_files(server.home)
        too_big = job_api.put("/artifacts/weights.bin", content=b"w" * (ARTIFACT_LIMIT + 1))
        assert too_big.status_code == 413
        assert f"NIMBUS_MAX_ARTIFACT_BYTES={ARTIFACT_LIMIT}" in error_of(too_big)["message"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: found out while streaming
            yield b"w" * ARTIFACT_LIMIT
            yield b"w"

        assert job_api.put("/artifacts/weights.bin", content=chunked()).status_code == 413
        assert blob_files(server.home) == blobs
        assert job_api.put("/artifacts/a.txt", content=b"a").status_code == 201
        assert job_api.put("/artifacts/b.txt", content=b"b").status_code == 201
        third = job_api.put("/artifacts/c.txt", content=b"c")
        assert third.status_code == 413
        assert f"NIMBUS_MAX_ARTIFACTS_PER_JOB={ARTIFACTS_PER_JOB}" in error_of(third)["message"]
        assert job_api.put("/artifacts/a.txt", content=b"A").status_code == 201  # a replacement
        # The tenant's storage quota counts artifacts too.
        set_quota(server, "qart", bytes=member_usage(server, "qart") + 10)
        blobs = blob_files(server.home)
        over = job_api.put("/artifacts/b.txt", content=b"b" * 100)
        assert over.status_code == 507 and error_of(over)["code"] == "storage_quota_exceeded"
        assert blob_files(server.home) == blobs


def test_deployment_and_replica_quotas(server: ServerProcess, tmp_path: Path) -> None:
    member = client(server, "member", "qdeploy")
    job = insert_job(server.home, "qdeploy", image_model_dir(tmp_path / "m", 1))
    registered = member.post(f"{API}/models/cnn/versions", json={"job": job})
    assert registered.status_code == 201, registered.text
    set_quota(server, "qdeploy", deployments=1, replicas=2)
    try:
        assert (
            member.post(
                f"{API}/deployments", json={"name": "wide", "model": "cnn:1", "replicas": 3}
            ).status_code
            == 429
        )
        created = member.post(f"{API}/deployments", json={"name": "one", "model": "cnn:1"})
        assert created.status_code == 201, created.text
        second = member.post(f"{API}/deployments", json={"name": "two", "model": "cnn:1"})
        assert second.status_code == 429
        assert error_of(second)["details"] == {"quota": "deployments", "limit": 1, "used": 1}
        scaled = member.patch(f"{API}/deployments/one", json={"replicas": 3})
        assert scaled.status_code == 429 and "quota of replicas (2" in error_of(scaled)["message"]
        assert member.get(f"{API}/deployments/one").json()["desired_replicas"] == 1
    finally:
        member.delete(f"{API}/deployments/one")


def declare_only(
    server: ServerProcess, token: str, path: str, length: int, method: str = "POST"
) -> bytes:
    """Send a request's headers declaring ``length`` body bytes, and none of the body; the
    answer the server gives without it (within 10 s)."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b"(no answer: the server waits for the body)"


def test_a_declared_length_past_the_storage_quota_is_refused_before_the_body(
    server: ServerProcess,
) -> None:
    token = make_token(server, "member", "qearly")
    member = server.client(token)
    assert upload(member, "reviews", csv_bytes("early")).status_code == 201
    set_quota(server, "qearly", bytes=member_usage(server, "qearly") + 10_000)
    for path in (f"{API}/datasets/big/versions?filename=d.csv", f"{API}/code?filename=t.py"):
        answer = declare_only(server, token, path, 50_000_000)
        assert answer.startswith(b"HTTP/1.1 507"), answer[:300]
        assert b"storage_quota_exceeded" in answer
    with running_attempt(server, member) as job_api:
        set_quota(server, "qearly", bytes=member_usage(server, "qearly") + 100)
        artifact = declare_only(
            server,
            job_api.headers["Authorization"].split()[1],
            f"{job_api.base_url.path.rstrip('/')}/artifacts/w.bin",
            ARTIFACT_LIMIT,
            "PUT",
        )
        assert artifact.startswith(b"HTTP/1.1 507"), artifact[:300]

        def chunked() -> Iterator[bytes]:  # no Content-Length: checked once staged
            yield b"w" * 3000

        assert job_api.put("/artifacts/w.bin", content=chunked()).status_code == 507
    assert upload(member, "small", csv_bytes("small")).status_code == 507  # 100 bytes left
    set_quota(server, "qearly", bytes=None)
    assert upload(member, "small", csv_bytes("small")).status_code == 201
