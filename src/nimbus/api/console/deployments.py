"""Deployments: the list and the deploy form; a deployment's replicas and live metrics
(scraped from its replicas), update, rollback, delete; and Try it (an image or a text sent to
the deployment's ``/predict`` and ``/explain`` by the control plane, server side)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from nimbus.api.console.replicas import MAX_TRY_BYTES, Tried, scrape, try_it
from nimbus.api.console.web import Browser, ConsoleRoute, Post, page, redirect
from nimbus.api.errors import describe_validation_error
from nimbus.api.state import services_of
from nimbus.errors import InvalidInput, NimbusError, PayloadTooLarge
from nimbus.services.console_sessions import SignedIn
from nimbus.wire.deployments import MAX_REPLICAS, CreateDeployment, UpdateDeployment

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
REFRESH = "every 3s"  # the live panel's htmx trigger
FORM_SLACK = (
    64 * 1024
)  # Try it's form besides the image: the CSRF field, a text, the parts' headers


def _body(kind: type[CreateDeployment] | type[UpdateDeployment], values: dict[str, Any]) -> Any:
    """A REST body from a form's fields: the API's own validation, the API's messages."""
    try:
        return kind.model_validate(values)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc.errors())) from None


@router.get("/deployments")
def deployments(request: Request, signed: Browser) -> Response:
    services = services_of(request)
    me = signed.principal
    context = {
        "deployments": services.deployments.list_deployments(me),
        "models": [m.name for m in services.models.list_models(me)],
        "max_replicas": MAX_REPLICAS,
    }
    return page(request, signed, "deployments.html", context, section="deployments")


@router.post("/deployments")
def deploy(
    request: Request,
    signed: Post,
    name: Annotated[str, Form()] = "",
    model: Annotated[str, Form()] = "",
    replicas: Annotated[int, Form()] = 1,
) -> Response:
    body = _body(
        CreateDeployment, {"name": name.strip(), "model": model.strip(), "replicas": replicas}
    )
    created = services_of(request).deployments.create(signed.principal, body)
    return redirect(f"/deployments/{created.name}")


def _detail(
    request: Request,
    signed: SignedIn,
    name: str,
    *,
    tried: Tried | None = None,
    try_error: str | None = None,
    status: int = 200,
) -> Response:
    services = services_of(request)
    shown = services.deployments.get(signed.principal, name)
    context = {
        "d": shown,
        "figures": scrape(signed.principal.tenant, shown, services.deployments.replica_key),
        "tried": tried,
        "try_error": try_error,
        "refresh": REFRESH,
        "max_replicas": MAX_REPLICAS,
        "max_try_mib": MAX_TRY_BYTES // (1024 * 1024),
    }
    return page(request, signed, "deployment.html", context, status=status, section="deployments")


@router.get("/deployments/{name}")
def deployment(request: Request, signed: Browser, name: str) -> Response:
    return _detail(request, signed, name)


@router.get("/deployments/{name}/live")
def live(request: Request, signed: Browser, name: str) -> Response:
    """The replicas and their metrics: the fragment the page refreshes every few seconds."""
    services = services_of(request)
    shown = services.deployments.get(signed.principal, name)
    figures = scrape(signed.principal.tenant, shown, services.deployments.replica_key)
    context = {"d": shown, "figures": figures}
    return page(request, signed, "deployment_live.html", context)


@router.post("/deployments/{name}/update")
def update(
    request: Request,
    signed: Post,
    name: str,
    model: Annotated[str, Form()] = "",
    replicas: Annotated[str, Form()] = "",
) -> Response:
    values: dict[str, Any] = {}
    if model.strip():
        values["model"] = model.strip()
    if replicas.strip():
        values["replicas"] = replicas.strip()
    if not values:
        raise InvalidInput("nothing to update: give a number of replicas or a model version")
    body = _body(UpdateDeployment, values)
    services_of(request).deployments.update(signed.principal, name, body)
    return redirect(f"/deployments/{name}")


@router.post("/deployments/{name}/rollback")
def rollback(request: Request, signed: Post, name: str) -> Response:
    services_of(request).deployments.rollback(signed.principal, name)
    return redirect(f"/deployments/{name}")


@router.get("/deployments/{name}/delete")
def confirm_delete(request: Request, signed: Browser, name: str) -> Response:
    shown = services_of(request).deployments.get(signed.principal, name)
    return page(request, signed, "deployment_delete.html", {"d": shown}, section="deployments")


@router.post("/deployments/{name}/delete")
def delete(request: Request, signed: Post, name: str) -> Response:
    services_of(request).deployments.delete(signed.principal, name)
    return redirect("/deployments")


def _small_enough(request: Request) -> None:
    """Before anything reads Try it's body (this runs first): a declared length of at most
    the image limit plus the form's other fields, else 413 unread."""
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        raise InvalidInput("Try it needs a Content-Length (a form post from the page)")
    if int(length) > MAX_TRY_BYTES + FORM_SLACK:
        raise PayloadTooLarge(f"the image is above {MAX_TRY_BYTES // (1024 * 1024)} MiB")


@router.post("/deployments/{name}/try", dependencies=[Depends(_small_enough)])
async def try_deployment(request: Request, signed: Post, name: str) -> Response:
    """Try it: a read, open to viewers too. Answers the result fragment to htmx, the whole
    page otherwise; the replica's refusal is shown as a message with its status."""
    services = services_of(request)
    shown = await run_in_threadpool(services.deployments.get, signed.principal, name)
    form = await request.form(max_files=1, max_fields=4)
    image, text = form.get("image"), form.get("text")
    text = text if isinstance(text, str) else ""
    tried: Tried | None = None
    error: str | None = None
    status = 200
    try:
        data = await _read_image(image if isinstance(image, UploadFile) else None)
        if data is None and not text.strip():
            raise InvalidInput("choose an image or type a text to try")
        tried = await run_in_threadpool(
            try_it,
            shown,
            services.deployments.replica_key,
            image=data,
            text=None if data is not None else text,
        )
    except NimbusError as exc:
        error, status = f"{exc.message} ({exc.status})", exc.status
    if request.headers.get("hx-request"):
        # htmx swaps only 2xx answers: the refusal is the fragment's message instead.
        context = {"d": shown, "tried": tried, "try_error": error}
        return page(request, signed, "deployment_try.html", context)
    return _detail(request, signed, name, tried=tried, try_error=error, status=status)


async def _read_image(image: UploadFile | None) -> bytes | None:
    """The uploaded image's bytes (None when no file was chosen); 413 past the limit,
    read no further than it."""
    if image is None or not image.filename:
        return None
    data = await image.read(MAX_TRY_BYTES + 1)
    if len(data) > MAX_TRY_BYTES:
        raise PayloadTooLarge(f"the image is above {MAX_TRY_BYTES // (1024 * 1024)} MiB")
    return data or None
