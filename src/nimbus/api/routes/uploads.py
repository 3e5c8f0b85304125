"""Direct transfers: upload sessions whose parts go straight to the bucket, and presigned
download links (docs/api.md, "Direct transfers")."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from nimbus.api.auth import Member, Viewer
from nimbus.api.state import services_of
from nimbus.errors import NotFound
from nimbus.services.datasets import SOURCE, parse_version
from nimbus.services.models import parse_version_ref
from nimbus.wire.datasets import DatasetVersion
from nimbus.wire.uploads import (
    CompleteUpload,
    CreateUpload,
    FileLink,
    PartUrls,
    PartUrlsRequest,
    UploadSession,
)

router = APIRouter(tags=["uploads"])


@router.post("/datasets/{name}/uploads", status_code=201, response_model=UploadSession)
def create_upload(
    name: str, body: CreateUpload, principal: Member, request: Request
) -> UploadSession:
    """Begin a direct upload of one file as a new version of dataset ``name`` (409
    ``direct_transfers_unavailable`` on a local blob store: stream it instead)."""
    return services_of(request).uploads.create(principal, name, body)


@router.get("/uploads/{upload_id}", response_model=UploadSession)
def show_upload(upload_id: str, principal: Member, request: Request) -> UploadSession:
    """The session, with the parts the bucket holds so far."""
    return services_of(request).uploads.show(principal, upload_id)


@router.post("/uploads/{upload_id}/parts", response_model=PartUrls)
def part_urls(
    upload_id: str, body: PartUrlsRequest, principal: Member, request: Request
) -> PartUrls:
    """Presigned PUT URLs for the parts named, each valid for one part of this upload."""
    return services_of(request).uploads.part_urls(principal, upload_id, body.numbers)


@router.post(
    "/uploads/{upload_id}/complete",
    status_code=201,
    response_model=DatasetVersion,
    responses={
        200: {"model": DatasetVersion, "description": "The identical version uploaded before"}
    },
)
async def complete_upload(
    upload_id: str, body: CompleteUpload, principal: Member, request: Request, response: Response
) -> DatasetVersion:
    """Join the parts, check them against ``sha256`` from the bucket, record the version.
    400 ``upload_mismatch`` (and the upload dropped, nothing recorded) when they differ."""
    uploads = services_of(request).uploads
    result = await run_in_threadpool(uploads.complete, principal, upload_id, body.sha256)
    if not result.created:
        response.status_code = 200
    return result.version


@router.delete("/uploads/{upload_id}", status_code=204)
def abort_upload(upload_id: str, principal: Member, request: Request) -> Response:
    """Drop the upload and every part of it."""
    services_of(request).uploads.abort(principal, upload_id)
    return Response(status_code=204)


@router.get("/datasets/{name}/versions/{v}/files/{file}/link", response_model=FileLink)
def file_link(name: str, v: str, file: str, principal: Viewer, request: Request) -> FileLink:
    """A presigned GET of the file, straight from the storage service (``url`` null on a
    local store: use ``…/files/{file}``); the client checks the bytes against ``sha256``."""
    services = services_of(request)
    version = services.datasets.get_version(principal, name, parse_version(v))
    entry = version.files.get(file)
    if entry is None:
        raise NotFound(f"{name}:{version.version} has no file {file[:80]!r}")
    download_name = (entry.name or file) if file == SOURCE else file
    return services.uploads.link(entry.key, entry.size, download_name)


@router.get("/models/{name}/versions/{v}/files/{file}/link", response_model=FileLink)
def model_file_link(name: str, v: str, file: str, principal: Viewer, request: Request) -> FileLink:
    """A presigned GET of a model version's file (``v``: a number, ``@ALIAS`` or
    ``latest``), as for datasets."""
    services = services_of(request)
    version = services.models.get_version(principal, name, parse_version_ref(v))
    entry = version.files.get(file)
    if entry is None:
        raise NotFound(f"{name}:{version.version} has no file {file[:80]!r}")
    return services.uploads.link(entry.key, entry.size, file)
