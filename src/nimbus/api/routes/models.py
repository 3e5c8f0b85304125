"""The model registry: register a job's model or import one trained elsewhere, read
versions, aliases, files, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from nimbus.api.auth import Member, Viewer
from nimbus.api.downloads import FILE_RESPONSE, attachment
from nimbus.api.state import services_of
from nimbus.api.upload import check_storage_quota_first, store_upload
from nimbus.errors import Unavailable
from nimbus.names import validate_name
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


@router.post(
    "/models/{name}/imports",
    status_code=201,
    response_model=ModelVersion,
    responses={200: {"model": ModelVersion, "description": "Imported before from that file"}},
)
async def import_version(
    name: str,
    principal: Member,
    request: Request,
    response: Response,
    task: str,
    classes: Annotated[list[str] | None, Query(max_length=100_000)] = None,
    filename: Annotated[str, Query(min_length=1, max_length=255)] = "model.onnx",
    input_layout: str | None = None,
    scale: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    size: str | None = None,
) -> ModelVersion:
    """The raw body is an ONNX file trained elsewhere; it becomes a new version of ``name``
    (lineage "imported") once checked (docs/import.md). ``classes`` is repeated, one class
    name each, in the order of the model's scores. 201 with a new version; 200 with the
    version the same file was imported as before with the same options."""
    services = services_of(request)
    imports = services.imports
    if imports is None:
        raise Unavailable("this server does not import models")
    validate_name(name, "model name")
    options = imports.options(
        task=task,
        classes=classes or (),
        layout=input_layout,
        scale=scale,
        mean=mean,
        std=std,
        size=size,
    )
    await check_storage_quota_first(
        request, services.quotas, principal.tenant_id, f"model {name!r}"
    )
    result = await store_upload(
        request,
        services.blobs.staging_dir,
        services.settings.max_artifact_bytes,
        lambda staged: imports.import_model(
            principal, name, staged.path, staged.sha256, staged.size, filename, options
        ),
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
