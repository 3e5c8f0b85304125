"""The OpenAPI document describes every JSON answer of the model registry and deployments:
each route names its wire model, and those models carry the fields docs/api.md promises."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.config import Settings
from nimbus.server import build_app
from tests.api.conftest import API

# Every JSON route of the two resources, with the 2xx statuses it answers and its model.
ROUTES = {
    ("post", "/models/{name}/versions"): ({"201", "200"}, "ModelVersion"),
    ("post", "/models/{name}/imports"): ({"201", "200"}, "ModelVersion"),
    ("get", "/models"): ({"200"}, "ModelList"),
    ("get", "/models/{name}"): ({"200"}, "Model"),
    ("get", "/models/{name}/versions"): ({"200"}, "ModelVersionList"),
    ("get", "/models/{name}/versions/{v}"): ({"200"}, "ModelVersion"),
    ("delete", "/models/{name}/versions/{v}"): ({"200"}, "ModelVersion"),
    ("get", "/models/{name}/versions/{v}/files/{file}/link"): ({"200"}, "FileLink"),
    ("get", "/models/{name}/versions/{v}/card"): ({"200"}, "ModelCard"),
    ("patch", "/models/{name}/versions/{v}/card"): ({"200"}, "ModelCard"),
    ("put", "/models/{name}/aliases/{alias}"): ({"200"}, "AliasChange"),
    ("delete", "/models/{name}/aliases/{alias}"): ({"200"}, "AliasChange"),
    ("post", "/deployments"): ({"201"}, "Deployment"),
    ("get", "/deployments"): ({"200"}, "DeploymentList"),
    ("get", "/deployments/{name}"): ({"200"}, "Deployment"),
    ("patch", "/deployments/{name}"): ({"200"}, "Deployment"),
    ("delete", "/deployments/{name}"): ({"200"}, "Deployment"),
    ("post", "/deployments/{name}/rollback"): ({"200"}, "Deployment"),
}
FILE_ROUTES = {("get", "/models/{name}/versions/{v}/files/{file}")}  # bytes, not JSON

# The fields of docs/api.md, in its order.
FIELDS = {
    "ModelVersion": [
        "model",
        "version",
        "job",
        "dataset",
        "code_hash",
        "params",
        "seed",
        "metrics",
        "spec",
        "files",
        "aliases",
        "created_at",
        "created_by",
        "lineage",
    ],
    "ModelDataset": ["name", "version", "content_hash"],
    "ModelFile": ["key", "size"],
    "ModelSummary": ["name", "latest_version", "versions", "aliases", "created_at", "updated_at"],
    "Model": ["name", "created_at", "versions", "aliases", "alias_history"],
    "AliasEvent": ["alias", "version", "from_version", "at", "by"],
    "AliasChange": ["model", "alias", "version", "from_version"],
    "Deployment": [
        "name",
        "model",
        "model_version",
        "model_ref",
        "previous_model_ref",
        "state",
        "replicas",
        "desired_replicas",
        "endpoint",
        "max_batch_size",
        "max_delay_ms",
        "runtime",
        "public",
        "owner",
        "created_at",
        "updated_at",
        "max_batch_rows",
        "max_tensor_elements",
    ],
    "Replica": ["index", "pid", "port", "state", "restarts", "model_version"],
    "CreateDeployment": [
        "name",
        "model",
        "replicas",
        "max_batch_size",
        "max_delay_ms",
        "runtime",
        "public",
        "max_batch_rows",
        "max_tensor_elements",
    ],
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home: Path = tmp_path_factory.mktemp("openapi") / "home"
    app = build_app(Settings(home=home))

    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nimbus") as client:
            return await client.get("/openapi.json")

    try:
        response = asyncio.run(fetch())
        assert response.status_code == 200, response.text
        yield response.json()
    finally:
        app.state.services.db.dispose()


def schema_name(content: dict[str, Any]) -> str:
    ref = content["application/json"]["schema"]["$ref"]
    assert ref.startswith("#/components/schemas/"), ref
    return str(ref.rsplit("/", 1)[1])


def test_every_json_route_names_its_wire_model(document: dict[str, Any]) -> None:
    found = {
        (method, path[len(API) :]): operation
        for path, item in document["paths"].items()
        if path.startswith((f"{API}/models", f"{API}/deployments"))
        for method, operation in item.items()
    }
    assert set(found) == set(ROUTES) | FILE_ROUTES
    for route, (statuses, model) in ROUTES.items():
        answers = {s: r for s, r in found[route]["responses"].items() if s.startswith("2")}
        assert set(answers) == statuses, route
        for status in statuses:
            assert schema_name(answers[status]["content"]) == model, (route, status)


def test_the_models_carry_the_documented_fields(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for name, fields in FIELDS.items():
        assert list(schemas[name]["properties"]) == fields, name
    response_fields = FIELDS.keys() - {"CreateDeployment", "ModelDataset"}
    for name in response_fields:  # every field is always sent, null or not
        assert set(schemas[name]["required"]) == set(FIELDS[name]), name
    assert schemas["ModelVersion"]["properties"]["created_at"]["type"] == "string"


def test_request_bodies_are_wire_models(document: dict[str, Any]) -> None:
    paths = document["paths"]
    bodies = {
        ("post", f"{API}/models/{{name}}/versions"): "RegisterVersion",
        ("put", f"{API}/models/{{name}}/aliases/{{alias}}"): "SetAlias",
        ("post", f"{API}/deployments"): "CreateDeployment",
        ("patch", f"{API}/deployments/{{name}}"): "UpdateDeployment",
    }
    for (method, path), model in bodies.items():
        assert schema_name(paths[path][method]["requestBody"]["content"]) == model, path
    create = document["components"]["schemas"]["CreateDeployment"]
    assert create["additionalProperties"] is False and set(create["required"]) == {"name", "model"}
