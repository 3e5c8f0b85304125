"""The model registry's pages: models, a model's versions and aliases (with their history),
a version's lineage, model card and files; register from a job, move or remove an alias,
delete a version."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from nimbus.api.console.web import Browser, ConsoleRoute, Post, page, redirect
from nimbus.api.downloads import attachment
from nimbus.api.state import services_of
from nimbus.errors import InvalidInput
from nimbus.names import version_number
from nimbus.services.card_markdown import body_html, card_markdown
from nimbus.services.models import VersionRef, parse_version_ref
from nimbus.wire.models import ModelVersion

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

PER_PAGE = 50  # versions on a model's page
METRIC_COLUMNS = 4  # metrics shown in the versions table (all are on a version's page)
PREFERRED = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss")


def scalars(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The metrics that are numbers (an evaluation also holds matrices and per-class
    tables, shown on the job's page)."""
    return {
        name: value
        for name, value in sorted((metrics or {}).items())
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def metric_columns(versions: Sequence[ModelVersion]) -> list[str]:
    """The scalar metrics worth a column: the usual ones first, then others by name."""
    found = {name for v in versions for name in scalars(v.metrics) if name != "support"}
    ordered = [m for m in PREFERRED if m in found] + sorted(found - set(PREFERRED))
    return ordered[:METRIC_COLUMNS]


def model_url(name: str, version: int | None = None) -> str:
    path = f"/models/{quote(name, safe='')}"
    return path if version is None else f"{path}/{version}"


@router.get("/models")
def models(request: Request, signed: Browser) -> Response:
    found = services_of(request).models.list_models(signed.principal)
    return page(request, signed, "models.html", {"models": found}, section="models")


@router.post("/models/register")
async def register(
    request: Request,
    signed: Post,
    job: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
) -> Response:
    """A new version of ``name`` from a succeeded job (checked, as the REST route does);
    the version's page after."""
    if not job.strip():
        raise InvalidInput("give the id of a succeeded job to register", field="job")
    if not name.strip():
        raise InvalidInput("give the model's name", field="name")
    models = services_of(request).models
    result = await run_in_threadpool(models.register, signed.principal, name.strip(), job.strip())
    return redirect(model_url(result.version.model, result.version.version))


@router.get("/models/{name}")
def model(
    request: Request, signed: Browser, name: str, page_number: int = Query(1, alias="page", ge=1)
) -> Response:
    offset = (page_number - 1) * PER_PAGE
    found = services_of(request).models.version_page(signed.principal, name, offset, PER_PAGE)
    pages = max(1, -(-found.total // PER_PAGE))
    context = {
        "model": found,
        "page": page_number,
        "pages": pages,
        "columns": metric_columns(found.versions),
    }
    return page(request, signed, "model.html", context, section="models")


@router.post("/models/{name}/aliases")
def set_alias(
    request: Request,
    signed: Post,
    name: str,
    alias: Annotated[str, Form()] = "",
    version: Annotated[str, Form()] = "",
) -> Response:
    """Point an alias at the chosen version (moving it from the one it named)."""
    number = version_number(version.strip())
    if number is None:
        raise InvalidInput(f"invalid version {version[:40]!r}: choose a version", field="version")
    if not alias.strip():
        raise InvalidInput("give the alias to move", field="alias")
    services_of(request).models.set_alias(signed.principal, name, alias.strip(), number)
    return redirect(model_url(name) + "#aliases")


@router.post("/models/{name}/aliases/{alias}/remove")
def remove_alias(request: Request, signed: Post, name: str, alias: str) -> Response:
    services_of(request).models.remove_alias(signed.principal, name, alias)
    return redirect(model_url(name) + "#aliases")


@router.get("/models/{name}/{version}")
def version(request: Request, signed: Browser, name: str, version: str) -> Response:
    services = services_of(request)
    ref = parse_version_ref(version)
    found = services.models.get_version(signed.principal, name, ref)
    card = services.cards.model_card(signed.principal, name, VersionRef(version=found.version))
    context = {
        "v": found,
        "metrics": scalars(found.metrics),
        "card_html": body_html(card_markdown(card), heading_offset=2),
    }
    return page(request, signed, "model_version.html", context, section="models")


@router.get("/models/{name}/{version}/files/{file}")
def download(
    request: Request, signed: Browser, name: str, version: str, file: str
) -> StreamingResponse:
    """A file of the version, verified against its hash, streamed as the REST route does."""
    ref = parse_version_ref(version)
    return attachment(services_of(request).models.download(signed.principal, name, ref, file))


@router.post("/models/{name}/{version}/delete")
def delete_version(
    request: Request,
    signed: Post,
    name: str,
    version: str,
    confirm: Annotated[str, Form()] = "",
) -> Response:
    """Delete a version once the form's confirmation box is ticked."""
    ref = parse_version_ref(version)
    if confirm != "yes":
        raise InvalidInput("tick the box to confirm the deletion", field="confirm")
    services_of(request).models.delete_version(signed.principal, name, ref)
    return redirect(model_url(name))
