"""Datasets and their versions: upload (streamed), read, download (verified), delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from nimbus.api.auth import Member, Viewer
from nimbus.api.downloads import FILE_RESPONSE, attachment
from nimbus.api.state import services_of
from nimbus.api.upload import check_storage_quota_first, store_upload
from nimbus.datasets.domain import Format, IngestOptions, Task
from nimbus.datasets.imagefit import parse_fit, parse_image_size
from nimbus.errors import InvalidInput
from nimbus.names import MAX_INT64, validate_name
from nimbus.services.datasets import parse_version, validate_filename
from nimbus.wire.datasets import (
    Dataset,
    DatasetDeleted,
    DatasetList,
    DatasetVersion,
    Derived,
    Purged,
    PurgeRequest,
    VersionList,
)

router = APIRouter(tags=["datasets"])


@router.post(
    "/datasets/{name}/versions",
    status_code=201,
    response_model=DatasetVersion,
    responses={
        200: {
            "model": DatasetVersion,
            "description": "The version uploaded before with identical content",
        }
    },
)
async def upload_version(
    name: str,
    principal: Member,
    request: Request,
    response: Response,
    filename: str | None = None,
    task: Task | None = None,
    format: Format | None = None,
    label: str | None = None,
    seed: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    image_size: str | None = None,
    image_fit: str | None = None,
    group_column: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
) -> DatasetVersion:
    """The raw file is the body. 201 with a new version, 200 with an identical one.

    ``image_size`` (``HxW``) and ``image_fit`` (``crop`` or ``pad``) say how the images of an
    image-folder upload are brought to one size (default: chosen from the data).
    ``group_column`` names a sensitive attribute's column (tables and text): kept out of
    the features, its groups are evaluated apart (fairness).
    """
    services = services_of(request)
    validate_name(name, "dataset name")
    if filename is None:
        raise InvalidInput("missing query parameter 'filename' (the uploaded file's name)")
    validate_filename(filename)
    options = IngestOptions(
        task=task,
        format=format,
        label=label,
        seed=seed,
        image_size=None if image_size is None else parse_image_size(image_size),
        image_fit=None if image_fit is None else parse_fit(image_fit),
        group_column=group_column,
    )
    await check_storage_quota_first(
        request, services.quotas, principal.tenant_id, f"dataset {name!r}"
    )
    result = await store_upload(
        request,
        services.blobs.staging_dir,
        services.settings.max_upload_bytes,
        lambda staged: services.datasets.upload(
            principal, name, staged.path, staged.sha256, filename, options
        ),
    )
    if not result.created:
        response.status_code = 200
    return result.version


@router.get("/datasets", response_model=DatasetList)
def list_datasets(principal: Viewer, request: Request) -> DatasetList:
    """The datasets of the caller's tenant with their latest version numbers."""
    return DatasetList(datasets=services_of(request).datasets.list_datasets(principal))


@router.get("/datasets/{name}", response_model=Dataset)
def get_dataset(name: str, principal: Viewer, request: Request) -> Dataset:
    """A dataset with all its versions."""
    return services_of(request).datasets.get_dataset(principal, name)


@router.get("/datasets/{name}/versions", response_model=VersionList)
def list_versions(name: str, principal: Viewer, request: Request) -> VersionList:
    """The versions of a dataset, oldest first."""
    return VersionList(versions=services_of(request).datasets.list_versions(principal, name))


@router.get("/datasets/{name}/versions/{v}", response_model=DatasetVersion)
def get_version(name: str, v: str, principal: Viewer, request: Request) -> DatasetVersion:
    """One version; ``v`` is a positive integer or ``latest``."""
    return services_of(request).datasets.get_version(principal, name, parse_version(v))


@router.get(
    "/datasets/{name}/versions/{v}/files/{file}",
    response_class=StreamingResponse,
    responses=FILE_RESPONSE,
)
def download_file(
    name: str, v: str, file: str, principal: Viewer, request: Request
) -> StreamingResponse:
    """The file's bytes, after the whole blob was checked against its hash."""
    return attachment(
        services_of(request).datasets.download(principal, name, parse_version(v), file)
    )


@router.delete("/datasets/{name}/versions/{v}", response_model=DatasetVersion)
def delete_version(name: str, v: str, principal: Member, request: Request) -> DatasetVersion:
    """Delete one version (its number is never given out again); returns it."""
    return services_of(request).datasets.delete_version(principal, name, parse_version(v))


@router.get("/datasets/{name}/versions/{v}/derived", response_model=Derived)
def derived_from_version(name: str, v: str, principal: Viewer, request: Request) -> Derived:
    """What purging the version would delete: the jobs trained on it (their artifacts,
    checkpoints and logs) and the model versions registered from them; with the
    fingerprint a purge must confirm."""
    return services_of(request).erasure.derived(principal, name, _number(v))


@router.post("/datasets/{name}/versions/{v}/purge", response_model=Purged)
def purge_version(
    name: str, v: str, body: PurgeRequest, principal: Member, request: Request
) -> Purged:
    """Erase the version and everything made from it, as listed by ``/derived`` (its
    ``fingerprint`` as ``confirm``): refused (409) while a derived model is deployed or a
    derived job is unfinished, or when the list changed; nothing is deleted then."""
    return services_of(request).erasure.purge(principal, name, _number(v), body.confirm)


def _number(v: str) -> int:
    number = parse_version(v)
    if number is None:
        raise InvalidInput("name the version to purge by its number, not 'latest'")
    return number


@router.delete("/datasets/{name}", response_model=DatasetDeleted)
def delete_dataset(name: str, principal: Member, request: Request) -> DatasetDeleted:
    """Delete a dataset with all its versions."""
    return services_of(request).datasets.delete_dataset(principal, name)
