"""The audit log records every mutating request, refused ones included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.api.conftest import API, csv_bytes, error_of
from tests.helpers import ServerProcess


def events(server: ServerProcess, token: str | None = None, limit: int = 100) -> list[Any]:
    with server.client(token) as client:
        response = client.get(f"{API}/audit", params={"limit": limit})
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


def test_mutations_are_audited_with_who_what_when_result(
    shared_server: ServerProcess, token_for: Callable[..., str]
) -> None:
    member_secret = token_for("member", "audited")
    viewer_secret = token_for("viewer", "audited")
    tenant_admin = token_for("admin", "audited")
    with shared_server.client(member_secret) as member:
        member_id = member.get(f"{API}/whoami").json()["token_id"]
        assert (
            member.post(
                f"{API}/datasets/logged/versions",
                params={"filename": "l.csv"},
                content=csv_bytes("audit"),
            ).status_code
            == 201
        )
        assert member.get(f"{API}/datasets/logged").status_code == 200  # reads: not audited
        assert member.delete(f"{API}/datasets/nothing-here").status_code == 404
    with shared_server.client(viewer_secret) as viewer:
        viewer_id = viewer.get(f"{API}/whoami").json()["token_id"]
        assert viewer.delete(f"{API}/datasets/logged").status_code == 403
    with shared_server.client(tenant_admin) as admin:
        assert admin.delete(f"{API}/tokens/{member_id}").status_code == 200
    with shared_server.client(member_secret) as revoked:
        assert (
            revoked.post(f"{API}/datasets/logged/versions?filename=x.csv", content=b"x").status_code
            == 401
        )

    log = events(shared_server, tenant_admin)
    seen = [(e["action"], e["resource"], e["status"], e["token_id"]) for e in log]
    assert seen[:5] == [
        ("POST", f"{API}/datasets/logged/versions", 401, member_id),
        ("DELETE", f"{API}/tokens/{member_id}", 200, seen[1][3]),
        ("DELETE", f"{API}/datasets/logged", 403, viewer_id),
        ("DELETE", f"{API}/datasets/nothing-here", 404, member_id),
        ("POST", f"{API}/datasets/logged/versions", 201, member_id),
    ]
    assert log[0]["detail"]["error"] == "unauthorized"
    assert log[2]["actor"] == "viewer-audited" and log[2]["detail"]["error"] == "forbidden"
    assert log[4]["detail"]["query"] == "filename=l.csv"
    assert all(e["at"].endswith("Z") for e in log)
    assert len(events(shared_server, tenant_admin, limit=2)) == 2
    # Another tenant's admin sees none of it.
    other = events(shared_server, token_for("admin", "elsewhere"))
    assert all(e["resource"] != f"{API}/datasets/logged" for e in other)


def test_anonymous_refusals_are_visible_to_the_operator(shared_server: ServerProcess) -> None:
    response = httpx.post(
        f"{shared_server.url}{API}/tokens",
        json={"name": "x"},
        headers={"Authorization": "Bearer nbt_" + "q" * 43},
    )
    assert response.status_code == 401
    latest = events(shared_server)[0]
    assert (latest["action"], latest["resource"], latest["status"]) == (
        "POST",
        f"{API}/tokens",
        401,
    )
    assert latest["token_id"] is None and latest["actor"] is None
    assert latest["detail"]["client"] == "127.0.0.1"


def test_audit_needs_admin_and_a_sane_limit(
    shared_server: ServerProcess, token_for: Callable[..., str]
) -> None:
    with shared_server.client(token_for("member")) as member:
        assert member.get(f"{API}/audit").status_code == 403
    with shared_server.client() as admin:
        for limit in ("0", "100000", "x"):
            response = admin.get(f"{API}/audit", params={"limit": limit})
            assert response.status_code == 400 and "limit" in error_of(response)["message"]
