"""MLflow's artifact proxy API (``/api/2.0/mlflow-artifacts/artifacts``): the MLflow
client uploads a run's files with ``PUT .../artifacts/PATH``, lists a directory with
``GET .../artifacts?path=DIR`` and downloads with ``GET .../artifacts/PATH``. The bytes go
into Nimbus's blob store (:mod:`nimbus.services.tracking_files`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from nimbus.api.auth import Member, Viewer
from nimbus.api.downloads import FILE_RESPONSE, attachment
from nimbus.api.mlflow_errors import no_nul_in_query
from nimbus.api.state import services_of
from nimbus.api.upload import declared_length, store_upload
from nimbus.services.tracking_files import parse_artifact_path

router = APIRouter(
    prefix="/api/2.0/mlflow-artifacts", tags=["mlflow"], dependencies=[Depends(no_nul_in_query)]
)


@router.put("/artifacts/{path:path}")
async def upload_artifact(path: str, principal: Member, request: Request) -> Any:
    services = services_of(request)
    files = services.tracking_files
    where = parse_artifact_path(path)
    await run_in_threadpool(files.check_upload, principal, where, declared_length(request))
    await store_upload(
        request,
        services.blobs.staging_dir,
        files.max_bytes,
        lambda staged: files.put(principal, where, staged.path, staged.sha256, staged.size),
    )
    return {}


@router.get("/artifacts")
def list_artifacts(
    principal: Viewer, request: Request, path: Annotated[str, Query(max_length=1200)] = ""
) -> Any:
    files = services_of(request).tracking_files.list(principal, parse_artifact_path(path))
    return {"files": files}


@router.get("/artifacts/{path:path}", responses=FILE_RESPONSE)
def download_artifact(path: str, principal: Viewer, request: Request) -> StreamingResponse:
    download = services_of(request).tracking_files.download(principal, parse_artifact_path(path))
    return attachment(download)
