"""The wire models of tokens, audit, datasets and code: declared in the OpenAPI document, and
the JSON the app answers is exactly what they write (fields, order, formats)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import BaseModel

from nimbus.api.app import create_app
from nimbus.config import Settings
from nimbus.server import bootstrap, build_services
from nimbus.wire.audit import AuditLog
from nimbus.wire.base import dump, parse
from nimbus.wire.code import CodeArtifact
from nimbus.wire.datasets import Dataset, DatasetDeleted, DatasetList, DatasetVersion, VersionList
from nimbus.wire.health import Health
from nimbus.wire.tokens import Identity, NewToken, Token, TokenList
from tests.api.conftest import API, csv_bytes

# (method, path, success status, model): every JSON route of these resources.
JSON_ROUTES = [
    ("get", "/healthz", "200", Health),
    ("get", f"{API}/whoami", "200", Identity),
    ("post", f"{API}/tokens", "201", NewToken),
    ("get", f"{API}/tokens", "200", TokenList),
    ("delete", f"{API}/tokens/{{token_id}}", "200", Token),
    ("get", f"{API}/audit", "200", AuditLog),
    ("post", f"{API}/datasets/{{name}}/versions", "201", DatasetVersion),
    ("post", f"{API}/datasets/{{name}}/versions", "200", DatasetVersion),
    ("get", f"{API}/datasets", "200", DatasetList),
    ("get", f"{API}/datasets/{{name}}", "200", Dataset),
    ("delete", f"{API}/datasets/{{name}}", "200", DatasetDeleted),
    ("get", f"{API}/datasets/{{name}}/versions", "200", VersionList),
    ("get", f"{API}/datasets/{{name}}/versions/{{v}}", "200", DatasetVersion),
    ("delete", f"{API}/datasets/{{name}}/versions/{{v}}", "200", DatasetVersion),
    ("post", f"{API}/code", "201", CodeArtifact),
]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    settings = Settings(home=tmp_path / "home")
    secret = bootstrap(settings)
    assert secret is not None
    services = build_services(settings)
    yield create_app(services), secret
    services.db.dispose()


def send(app: Any, secret: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request through the ASGI app (no server, no lifespan)."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://nimbus", headers=headers
        ) as client:
            return await client.request(method, url, **kwargs)

    return asyncio.run(run())


@pytest.mark.parametrize(("method", "path", "status", "model"), JSON_ROUTES)
def test_each_json_route_declares_its_response_model(
    app: tuple[Any, str], method: str, path: str, status: str, model: type[BaseModel]
) -> None:
    document = app[0].openapi()
    response = document["paths"][path][method]["responses"][status]
    schema = response["content"]["application/json"]["schema"]
    assert schema == {"$ref": f"#/components/schemas/{model.__name__}"}
    declared = document["components"]["schemas"][model.__name__]
    fields = [info.alias or name for name, info in model.model_fields.items()]
    assert list(declared["properties"]) == fields


def test_the_token_request_body_is_declared(app: tuple[Any, str]) -> None:
    document = app[0].openapi()
    body = document["paths"][f"{API}/tokens"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    declared = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert declared["additionalProperties"] is False
    assert declared["required"] == ["name"]
    assert set(declared["properties"]) == {"name", "role", "tenant", "expires_at"}


M = TypeVar("M", bound=BaseModel)


def exact(model: type[M], body: Any) -> M:
    """``body`` parsed as ``model``, checking that the model writes it back unchanged."""
    parsed = parse(model, body)
    assert dump(parsed) == body and list(dump(parsed)) == list(body)
    return parsed


def test_the_bodies_are_what_the_models_write(app: tuple[Any, str]) -> None:
    asgi, secret = app
    iso_z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")

    def call(method: str, url: str, status: int = 200, **kwargs: Any) -> Any:
        response = send(asgi, secret, method, url, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    exact(Health, call("GET", "/healthz"))
    exact(Identity, call("GET", f"{API}/whoami"))
    created = call("POST", f"{API}/tokens", 201, json={"name": "ci", "role": "viewer"})
    assert list(created)[-1] == "token"  # the secret comes last, after the listed fields
    exact(NewToken, created)
    assert iso_z.match(created["created_at"]) and created["expires_at"] is None
    listed = exact(TokenList, call("GET", f"{API}/tokens"))
    assert "token" not in dump(listed)["tokens"][0]
    revoked = call("DELETE", f"{API}/tokens/{created['id']}")
    exact(Token, revoked)
    assert iso_z.match(revoked["revoked_at"])
    unknown = send(asgi, secret, "POST", f"{API}/tokens", json={"name": "x", "colour": "red"})
    assert unknown.status_code == 400 and "'colour'" in unknown.json()["error"]["message"]

    data = csv_bytes("wire")
    upload = {"params": {"filename": "reviews.csv"}, "content": data}
    first = call("POST", f"{API}/datasets/reviews/versions", 201, **upload)
    version = exact(DatasetVersion, first)
    assert first["files"]["source"]["name"] == "reviews.csv"
    assert all("name" not in f for n, f in first["files"].items() if n != "source")
    assert iso_z.match(first["created_at"])
    assert call("POST", f"{API}/datasets/reviews/versions", 200, **upload) == first
    assert exact(DatasetVersion, call("GET", f"{API}/datasets/reviews/versions/1")) == version
    exact(VersionList, call("GET", f"{API}/datasets/reviews/versions"))
    exact(Dataset, call("GET", f"{API}/datasets/reviews"))
    exact(DatasetList, call("GET", f"{API}/datasets"))
    script = b"print('hello')\n"
    code = exact(
        CodeArtifact, call("POST", f"{API}/code", 201, params={"filename": "t.py"}, content=script)
    )
    assert code.sha256 == hashlib.sha256(script).hexdigest() and code.ref.endswith(code.sha256)
    exact(DatasetVersion, call("DELETE", f"{API}/datasets/reviews/versions/1"))
    exact(DatasetDeleted, call("DELETE", f"{API}/datasets/reviews"))
    log = exact(AuditLog, call("GET", f"{API}/audit"))
    assert [event.action for event in log.events][:2] == ["DELETE", "DELETE"]
