"""Authentication and authorisation through a real server."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.api.conftest import API, csv_bytes, error_of
from tests.helpers import ServerProcess

ROUTES = [
    ("GET", "/tokens"),
    ("POST", "/tokens"),
    ("DELETE", "/tokens/tok_0123"),
    ("GET", "/whoami"),
    ("GET", "/audit"),
    ("GET", "/datasets"),
    ("GET", "/datasets/digits"),
    ("DELETE", "/datasets/digits"),
    ("GET", "/datasets/digits/versions"),
    ("POST", "/datasets/digits/versions?filename=d.csv"),
    ("GET", "/datasets/digits/versions/1"),
    ("DELETE", "/datasets/digits/versions/1"),
    ("GET", "/datasets/digits/versions/latest/files/source"),
]
BAD_HEADERS = [
    {},
    {"Authorization": "Bearer nbt_" + "x" * 43},
    {"Authorization": "Bearer not-a-token"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_valid_token(
    shared_server: ServerProcess, method: str, path: str
) -> None:
    for headers in BAD_HEADERS:
        response = httpx.request(
            method,
            shared_server.url + API + path,
            headers=headers,
            content=b"x" if method == "POST" else None,
        )
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert error_of(response)["code"] == "unauthorized"


def test_health_needs_no_token(shared_server: ServerProcess) -> None:
    health = httpx.get(shared_server.url + "/healthz").json()
    assert (health["status"], health["version"]) == ("ok", "0.1.0")
    assert set(health) <= {"status", "version", "job_isolation"}


def test_whoami_and_token_listing(
    shared_server: ServerProcess, token_for: Callable[..., str]
) -> None:
    secret = token_for("viewer")
    with shared_server.client(secret) as viewer:
        me = viewer.get(f"{API}/whoami").json()
    assert (me["name"], me["role"], me["tenant"]) == ("viewer-default", "viewer", "default")
    with shared_server.client() as admin:
        listed = admin.get(f"{API}/tokens").json()["tokens"]
    mine = next(t for t in listed if t["id"] == me["token_id"])
    assert set(mine) >= {"id", "name", "role", "tenant", "created_at", "revoked_at"}
    assert secret not in str(listed) and "token" not in mine and "token_hash" not in mine


def test_revoked_token_is_refused_at_once(
    shared_server: ServerProcess, token_for: Callable[..., str]
) -> None:
    secret = token_for("member")
    with shared_server.client(secret) as member:
        token_id = member.get(f"{API}/whoami").json()["token_id"]
        with shared_server.client() as admin:
            revoked = admin.delete(f"{API}/tokens/{token_id}")
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        response = member.get(f"{API}/datasets")
    assert response.status_code == 401 and "revoked" in error_of(response)["message"]


def test_viewer_cannot_mutate(shared_server: ServerProcess, token_for: Callable[..., str]) -> None:
    with shared_server.client(token_for("viewer")) as viewer:
        upload = viewer.post(
            f"{API}/datasets/reviews/versions",
            params={"filename": "r.csv"},
            content=csv_bytes("viewer"),
        )
        delete = viewer.delete(f"{API}/datasets/reviews")
        token = viewer.post(f"{API}/tokens", json={"name": "x", "role": "viewer"})
        audit = viewer.get(f"{API}/audit")
        assert viewer.get(f"{API}/datasets").status_code == 200
    for response in (upload, delete, token, audit):
        assert response.status_code == 403, response.text
        assert error_of(response)["code"] == "forbidden"


def test_members_cannot_manage_tokens(
    shared_server: ServerProcess, token_for: Callable[..., str]
) -> None:
    with shared_server.client(token_for("member")) as member:
        assert member.post(f"{API}/tokens", json={"name": "x"}).status_code == 403
        assert member.get(f"{API}/tokens").status_code == 403


def test_tenants_are_isolated(shared_server: ServerProcess, token_for: Callable[..., str]) -> None:
    a, b = token_for("admin", "tenant-a"), token_for("admin", "tenant-b")
    with shared_server.client(a) as alice:
        created = alice.post(
            f"{API}/datasets/secret/versions",
            params={"filename": "s.csv"},
            content=csv_bytes("tenant-a"),
        )
        assert created.status_code == 201, created.text
        assert alice.get(f"{API}/whoami").json()["tenant"] == "tenant-a"
        alice_token = alice.get(f"{API}/whoami").json()["token_id"]
        # A tenant admin may not create tokens elsewhere (only admins of 'default' may).
        other = alice.post(f"{API}/tokens", json={"name": "x", "tenant": "tenant-b"})
        assert other.status_code == 403
    with shared_server.client(b) as bob:
        for path in (
            "/datasets/secret",
            "/datasets/secret/versions",
            "/datasets/secret/versions/1",
            "/datasets/secret/versions/1/files/source",
        ):
            response = bob.get(API + path)
            assert response.status_code == 404, (path, response.text)
            assert error_of(response)["code"] == "not_found"
        assert bob.delete(f"{API}/datasets/secret/versions/1").status_code == 404
        assert bob.delete(f"{API}/datasets/secret").status_code == 404
        assert bob.delete(f"{API}/tokens/{alice_token}").status_code == 404
        assert bob.get(f"{API}/datasets").json() == {"datasets": []}
        assert all(t["tenant"] == "tenant-b" for t in bob.get(f"{API}/tokens").json()["tokens"])
    with shared_server.client(a) as alice:
        assert alice.get(f"{API}/datasets/secret").status_code == 200


def test_token_request_validation(shared_server: ServerProcess) -> None:
    with shared_server.client() as admin:
        bad_role = admin.post(f"{API}/tokens", json={"name": "x", "role": "root"})
        no_name = admin.post(f"{API}/tokens", json={"role": "viewer"})
        not_json = admin.post(
            f"{API}/tokens", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        bad_tenant = admin.post(f"{API}/tokens", json={"name": "x", "tenant": "../etc"})
    assert bad_role.status_code == 400 and "'role'" in error_of(bad_role)["message"]
    assert no_name.status_code == 400 and "'name'" in error_of(no_name)["message"]
    assert not_json.status_code == 400 and "JSON" in error_of(not_json)["message"]
    assert bad_tenant.status_code == 400 and "tenant" in error_of(bad_tenant)["message"]


def test_token_expiry_must_be_in_the_future(shared_server: ServerProcess) -> None:
    with shared_server.client() as admin:
        past = admin.post(
            f"{API}/tokens", json={"name": "old", "expires_at": "2001-01-01T00:00:00Z"}
        )
        assert past.status_code == 400
        soon = admin.post(
            f"{API}/tokens", json={"name": "soon", "expires_at": "2999-01-01T00:00:00Z"}
        )
        assert soon.status_code == 201 and soon.json()["expires_at"] == "2999-01-01T00:00:00Z"
