"""Datasets in the console: the list with an upload form, a dataset's versions, a version's
page (schema, class histograms, sample images or rows, stats, the jobs that read it), and
deleting a version.

An upload goes through the same service, limits and checks as ``POST
/api/v1/datasets/{name}/versions``: the page's script (static/datasets.js) sends the file
as the raw body of ``POST /datasets?name=&filename=`` to show its progress; without
scripts the form posts it as multipart/form-data to the same address.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from nimbus.api.console.web import Browser, ConsoleRoute, Post, page, redirect
from nimbus.api.state import services_of
from nimbus.api.upload import (
    StagedUpload,
    check_declared_length,
    check_storage_quota_first,
    declared_length,
    receive_upload,
)
from nimbus.datasets.domain import IngestOptions
from nimbus.errors import InvalidInput, NimbusError, NotFound
from nimbus.names import validate_name
from nimbus.security import Role, require_role
from nimbus.services.console_sessions import SignedIn
from nimbus.services.datasets import parse_version, validate_filename
from nimbus.wire.datasets import DatasetVersion

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

SHOWN_ITEMS = 40  # of a list in a schema or stats shown
SHOWN_FEATURES = 100  # rows of a table's per-feature stats
SHOWN_JOBS = 50
COPY_CHUNK = 1024 * 1024
PER_FEATURE = ("feature_mean", "feature_std", "missing")  # a table's stats, shown as a table


# -- list and upload --------------------------------------------------------------------


@router.get("/datasets")
def list_datasets(request: Request, signed: Browser) -> Response:
    return _list_page(request, signed)


def _list_page(
    request: Request,
    signed: SignedIn,
    *,
    error: str | None = None,
    status: int = 200,
    name: str = "",
) -> Response:
    services = services_of(request)
    context = {
        "datasets": services.datasets.overview(signed.principal),
        "error": error,
        "name": name,
        "max_upload": services.settings.max_upload_bytes,
    }
    return page(request, signed, "datasets.html", context, status=status, section="datasets")


async def _before_the_body(request: Request, signed: Browser) -> None:
    """Refuse before a byte of the file is read: a viewer, a body over the size limit or the
    storage quota, a form upload of unknown length (it would be spooled whole first)."""
    services = services_of(request)
    require_role(signed.principal, Role.MEMBER)
    check_declared_length(request, services.settings.max_upload_bytes)
    if _is_form(request) and declared_length(request) is None:
        raise InvalidInput("a form upload needs a Content-Length header")
    await check_storage_quota_first(
        request, services.quotas, signed.principal.tenant_id, "the dataset"
    )


def _is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


@router.post("/datasets")
async def upload(
    request: Request,
    _checked: Annotated[None, Depends(_before_the_body)],
    signed: Post,
    name: str | None = None,
    filename: str | None = None,
) -> Response:
    """The script's raw body (``name``, ``filename`` in the query; JSON answer with the
    version's address) or the plain form's multipart post (a redirect to the version, or the
    list page again with the error)."""
    if _is_form(request):
        return await _form_upload(request, signed)
    if not name:
        raise InvalidInput("missing query parameter 'name' (the dataset's name)")
    if not filename:
        raise InvalidInput("missing query parameter 'filename' (the uploaded file's name)")
    validate_name(name, "dataset name")
    validate_filename(filename)
    services = services_of(request)
    staged = await receive_upload(
        request, services.blobs.staging_dir, services.settings.max_upload_bytes
    )
    version, created = await _ingest(request, signed, name, filename, staged)
    body = {"url": _address(version), "dataset": name, "version": version.version}
    return JSONResponse(body, status_code=201 if created else 200)


async def _form_upload(request: Request, signed: SignedIn) -> Response:
    form = await request.form()  # read (and spooled) already by the CSRF check
    name, file = form.get("name"), form.get("file")
    shown = name.strip() if isinstance(name, str) else ""
    try:
        if not shown:
            raise InvalidInput("give the dataset a name")
        validate_name(shown, "dataset name")
        if not isinstance(file, UploadFile) or not file.filename:
            raise InvalidInput("choose a file to upload")
        validate_filename(file.filename)
        staging_dir = services_of(request).blobs.staging_dir
        staged = await run_in_threadpool(_stage, file.file, staging_dir)
        version, _ = await _ingest(request, signed, shown, file.filename, staged)
    except NimbusError as exc:
        return _list_page(request, signed, error=exc.message, status=exc.status, name=shown)
    return redirect(_address(version))


def _stage(source: BinaryIO, staging_dir: Path) -> StagedUpload:
    """Copy a spooled form file into the staging directory, hashing it on the way."""
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=staging_dir, prefix="upload-")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            source.seek(0)
            while chunk := source.read(COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return StagedUpload(Path(name), digest.hexdigest(), size)


async def _ingest(
    request: Request, signed: SignedIn, name: str, filename: str, staged: StagedUpload
) -> tuple[DatasetVersion, bool]:
    try:
        result = await run_in_threadpool(
            services_of(request).datasets.upload,
            signed.principal,
            name,
            staged.path,
            staged.sha256,
            filename,
            IngestOptions(),
        )
    finally:
        staged.path.unlink(missing_ok=True)
    return result.version, result.created


def _address(version: DatasetVersion) -> str:
    return f"/datasets/{version.dataset}/{version.version}"


# -- a dataset, a version -----------------------------------------------------------------


@router.get("/datasets/{name}")
def dataset(name: str, request: Request, signed: Browser) -> Response:
    found = services_of(request).datasets.get_dataset(signed.principal, name)
    context = {"dataset": found, "versions": list(reversed(found.versions))}
    return page(request, signed, "datasets_one.html", context, section="datasets")


@router.get("/datasets/{name}/{v}")
def version(name: str, v: str, request: Request, signed: Browser) -> Response:
    datasets = services_of(request).datasets
    me = signed.principal
    found = datasets.get_version(me, name, parse_version(v))
    try:
        samples = datasets.samples(me, name, found.version)
        samples_error = None
    except NimbusError as exc:  # the page still shows what the version's row holds
        samples, samples_error = None, exc.message
    context = {
        "v": found,
        "histograms": _histograms(found),
        "schema": _facts(found.data_schema),
        "stats": _facts({k: s for k, s in found.stats.items() if k not in PER_FEATURE}),
        "features": _feature_stats(found.stats),
        "samples": samples,
        "samples_error": samples_error,
        "jobs": datasets.jobs_using(me, name, found.version, SHOWN_JOBS),
        "shown_jobs": SHOWN_JOBS,
    }
    return page(request, signed, "datasets_version.html", context, section="datasets")


@router.get("/datasets/{name}/{v}/samples/{index}.png")
def sample_image(name: str, v: str, index: int, request: Request, signed: Browser) -> Response:
    """One sample image of the version's grid, as PNG."""
    samples = services_of(request).datasets.samples(signed.principal, name, parse_version(v))
    item = samples.items[index] if 0 <= index < len(samples.items) else None
    if item is None or item.png is None:
        raise NotFound(f"{name}:{v} has no sample image {index}")
    headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(item.png, media_type="image/png", headers=headers)


@router.get("/datasets/{name}/{v}/delete")
def confirm_delete(name: str, v: str, request: Request, signed: Browser) -> Response:
    require_role(signed.principal, Role.MEMBER)
    found = services_of(request).datasets.get_version(signed.principal, name, parse_version(v))
    return page(request, signed, "datasets_delete.html", {"v": found}, section="datasets")


@router.post("/datasets/{name}/{v}/delete")
def delete_version(name: str, v: str, request: Request, signed: Post) -> Response:
    datasets = services_of(request).datasets
    datasets.delete_version(signed.principal, name, parse_version(v))
    left = datasets.overview(signed.principal)
    if any(d.name == name and d.versions for d in left):
        return redirect(f"/datasets/{name}")
    return redirect("/datasets")


# -- what a version's page shows ------------------------------------------------------


def _histograms(found: DatasetVersion) -> list[dict[str, Any]]:
    """Per split: each class's count and its bar's width (percent of the largest)."""
    shown = []
    for split, info in found.splits.items():
        top = max(info.per_class.values(), default=0) or 1
        bars = [
            {"label": label, "count": count, "width": round(100 * count / top, 1)}
            for label, count in info.per_class.items()
        ]
        shown.append({"split": split, "size": info.size, "bars": bars})
    return shown


def _feature_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """A table's per-feature mean, std and missing counts, as rows (the first ones)."""
    means = stats.get("feature_mean")
    if not isinstance(means, dict):
        return {}
    names = list(means)
    rows = [
        {
            "name": n,
            "mean": means.get(n),
            "std": (stats.get("feature_std") or {}).get(n),
            "missing": (stats.get("missing") or {}).get(n),
        }
        for n in names[:SHOWN_FEATURES]
    ]
    return {"rows": rows, "hidden": max(0, len(names) - SHOWN_FEATURES)}


def _facts(values: dict[str, Any]) -> list[tuple[str, str]]:
    """A schema's or stats' entries as text, long lists cut short."""
    return [(str(key), _text(value)) for key, value in values.items()]


def _text(value: Any) -> str:
    if isinstance(value, dict):
        items = list(value.items())
        shown = ", ".join(f"{k}: {_text(v)}" for k, v in items[:SHOWN_ITEMS])
        more = f", … ({len(items) - SHOWN_ITEMS} more)" if len(items) > SHOWN_ITEMS else ""
        return shown + more
    if isinstance(value, list | tuple):
        shown = ", ".join(_text(v) for v in value[:SHOWN_ITEMS])
        more = f", … ({len(value) - SHOWN_ITEMS} more)" if len(value) > SHOWN_ITEMS else ""
        return f"[{shown}{more}]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
