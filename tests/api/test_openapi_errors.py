"""The OpenAPI document describes errors as the API answers them: 400 (never FastAPI's 422)
and every other 4xx with the one error body."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from nimbus.api.app import create_app
from nimbus.config import Settings
from nimbus.server import bootstrap, build_services
from nimbus.wire.errors import ErrorBody


def document(tmp_path: Path) -> tuple[dict[str, Any], httpx.Response]:
    settings = Settings(home=tmp_path / "home")
    secret = bootstrap(settings)
    services = build_services(settings)
    transport = httpx.ASGITransport(app=create_app(services))

    async def ask() -> tuple[dict[str, Any], httpx.Response]:
        async with httpx.AsyncClient(transport=transport, base_url="http://nimbus") as client:
            doc = (await client.get("/openapi.json")).json()
            bad = await client.post(
                "/api/v1/tokens",
                json={"name": "x", "role": "emperor"},
                headers={"Authorization": f"Bearer {secret}"},
            )
            return doc, bad

    try:
        return asyncio.run(ask())
    finally:
        services.db.dispose()


def test_errors_are_400_and_one_body_in_the_document(tmp_path: Path) -> None:
    doc, bad = document(tmp_path)
    operations = [op for ops in doc["paths"].values() for op in ops.values()]
    assert operations
    for operation in operations:
        assert "422" not in operation["responses"], operation["operationId"]
        error = operation["responses"]["4XX"]["content"]["application/json"]["schema"]
        assert error == {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert set(doc["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    # ...and that is what a bad request really answers.
    assert bad.status_code == 400
    assert ErrorBody.model_validate(bad.json()).error.code == "invalid_input"
