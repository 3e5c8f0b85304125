"""The model registry: register a job's model, read versions, aliases, files, delete."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from nimbus.api.auth import Member, Viewer
from nimbus.api.state import services_of
from nimbus.services.models import parse_version_ref

router = APIRouter(tags=["models"])


class RegisterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: str = Field(min_length=1, max_length=64)


class AliasBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)


@router.post("/models/{name}/versions", status_code=201)
async def register_version(
    name: str, body: RegisterBody, principal: Member, request: Request
) -> JSONResponse:
    """201 with a new version; 200 with the version already registered from that job."""
    result = await run_in_threadpool(
        services_of(request).models.register, principal, name, body.job
    )
    return JSONResponse(result.version, status_code=201 if result.created else 200)


@router.get("/models")
def list_models(principal: Viewer, request: Request) -> dict[str, Any]:
    return {"models": services_of(request).models.list_models(principal)}


@router.get("/models/{name}")
def get_model(name: str, principal: Viewer, request: Request) -> dict[str, Any]:
    return services_of(request).models.get_model(principal, name)


@router.get("/models/{name}/versions")
def list_versions(name: str, principal: Viewer, request: Request) -> dict[str, Any]:
    return {"versions": services_of(request).models.list_versions(principal, name)}


@router.get("/models/{name}/versions/{v}")
def get_version(name: str, v: str, principal: Viewer, request: Request) -> dict[str, Any]:
    return services_of(request).models.get_version(principal, name, parse_version_ref(v))


@router.get("/models/{name}/versions/{v}/files/{file}")
def download_file(
    name: str, v: str, file: str, principal: Viewer, request: Request
) -> StreamingResponse:
    """The file's bytes, after the whole blob was checked against its hash."""
    download = services_of(request).models.download(principal, name, parse_version_ref(v), file)
    headers = {
        "Content-Length": str(download.size),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(download.name, safe='')}",
    }
    return StreamingResponse(
        download.chunks, media_type="application/octet-stream", headers=headers
    )


@router.put("/models/{name}/aliases/{alias}")
def set_alias(
    name: str, alias: str, body: AliasBody, principal: Member, request: Request
) -> dict[str, Any]:
    return services_of(request).models.set_alias(principal, name, alias, body.version)


@router.delete("/models/{name}/aliases/{alias}")
def remove_alias(name: str, alias: str, principal: Member, request: Request) -> dict[str, Any]:
    return services_of(request).models.remove_alias(principal, name, alias)


@router.delete("/models/{name}/versions/{v}")
def delete_version(name: str, v: str, principal: Member, request: Request) -> dict[str, Any]:
    return services_of(request).models.delete_version(principal, name, parse_version_ref(v))
