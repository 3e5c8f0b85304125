"""The model registry: register a job's model, read versions, aliases, files, delete."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from nimbus.api.auth import Member, Viewer
from nimbus.api.downloads import FILE_RESPONSE, attachment
from nimbus.api.state import services_of
from nimbus.services.models import parse_version_ref
from nimbus.wire.models import (
    AliasChange,
    Model,
    ModelList,
    ModelVersion,
    ModelVersionList,
    RegisterVersion,
    SetAlias,
)

router = APIRouter(tags=["models"])


@router.post(
    "/models/{name}/versions",
    status_code=201,
    response_model=ModelVersion,
    responses={200: {"model": ModelVersion, "description": "Already registered from that job"}},
)
async def register_version(
    name: str, body: RegisterVersion, principal: Member, request: Request, response: Response
) -> ModelVersion:
    """201 with a new version; 200 with the version already registered from that job."""
    result = await run_in_threadpool(
        services_of(request).models.register, principal, name, body.job, body.card
    )
    if not result.created:
        response.status_code = 200
    return result.version


@router.get("/models", response_model=ModelList)
def list_models(principal: Viewer, request: Request) -> ModelList:
    return ModelList(models=services_of(request).models.list_models(principal))


@router.get("/models/{name}", response_model=Model)
def get_model(name: str, principal: Viewer, request: Request) -> Model:
    return services_of(request).models.get_model(principal, name)


@router.get("/models/{name}/versions", response_model=ModelVersionList)
def list_versions(name: str, principal: Viewer, request: Request) -> ModelVersionList:
    return ModelVersionList(versions=services_of(request).models.list_versions(principal, name))


@router.get("/models/{name}/versions/{v}", response_model=ModelVersion)
def get_version(name: str, v: str, principal: Viewer, request: Request) -> ModelVersion:
    return services_of(request).models.get_version(principal, name, parse_version_ref(v))


@router.get(
    "/models/{name}/versions/{v}/files/{file}",
    response_class=StreamingResponse,
    responses=FILE_RESPONSE,
)
def download_file(
    name: str, v: str, file: str, principal: Viewer, request: Request
) -> StreamingResponse:
    """The file's bytes, after the whole blob was checked against its hash."""
    return attachment(
        services_of(request).models.download(principal, name, parse_version_ref(v), file)
    )


@router.put("/models/{name}/aliases/{alias}", response_model=AliasChange)
def set_alias(
    name: str, alias: str, body: SetAlias, principal: Member, request: Request
) -> AliasChange:
    return services_of(request).models.set_alias(principal, name, alias, body.version)


@router.delete("/models/{name}/aliases/{alias}", response_model=AliasChange)
def remove_alias(name: str, alias: str, principal: Member, request: Request) -> AliasChange:
    return services_of(request).models.remove_alias(principal, name, alias)


@router.delete("/models/{name}/versions/{v}", response_model=ModelVersion)
def delete_version(name: str, v: str, principal: Member, request: Request) -> ModelVersion:
    return services_of(request).models.delete_version(principal, name, parse_version_ref(v))
