"""The jobs list (``/jobs``: filtered, sorted and paged by the database; the table swapped
in place by htmx, the address kept bookmarkable) and the form that starts a job
(``/jobs/new``, posting to the same :meth:`JobService.submit` as ``POST /api/v1/jobs``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from nimbus.api.console.web import Browser, ConsoleRoute, Post, page, redirect
from nimbus.api.errors import describe_validation_error
from nimbus.api.state import services_of
from nimbus.db.job_details import ListedJob
from nimbus.errors import InvalidInput, NotFound
from nimbus.jobs.domain import JobState
from nimbus.security import Role, require_role
from nimbus.services.jobs import BUILTIN_MODELS, job_filter
from nimbus.wire.jobs import SubmitRequest

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

PER_PAGE = (25, 50, 100)
# What the list's address may carry, in the order its links write them.
QUERY = ("state", "model", "dataset", "study", "metric", "sort", "order", "per_page")
PREFERRED = ("val_accuracy", "accuracy", "val_loss", "loss")  # the column shown by default
FIELDS = ("dataset", "model", "params", "epochs", "lr", "batch_size")
RESOURCES = ("cpus", "gpus", "memory", "priority")


def _duration(job: ListedJob, now: datetime) -> str:
    """How long it ran (or has been running), as ``1h 02m``, ``3m 05s`` or ``12s``."""
    if job.started_at is None:
        return "\u2013"
    seconds = int(((job.finished_at or now) - job.started_at).total_seconds())
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _params(job: ListedJob, limit: int = 80) -> str:
    text = ", ".join(f"{k}={v}" for k, v in sorted(job.params.items()) if k != "seed")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@router.get("/jobs")
def jobs_list(
    request: Request,
    signed: Browser,
    state: str = "",
    model: str = "",
    dataset: str = "",
    study: str = "",
    metric: str = "",
    sort: str = "created",
    order: str = "",
    number: Annotated[int, Query(alias="page")] = 1,
    per_page: int = 50,
) -> Response:
    jobs = services_of(request).jobs
    names = jobs.metric_names(signed.principal)
    if not metric and names:
        metric = "best:" + next((n for n in PREFERRED if n in names), names[0])
    wanted = job_filter(
        state=state,
        model=model,
        dataset=dataset,
        study=study,
        metric=metric,
        sort=sort,
        order=order,
        page=number,
        per_page=per_page,
    )
    found = jobs.list_page(signed.principal, wanted)
    query = {
        "state": state,
        "model": model,
        "dataset": dataset,
        "study": study,
        "metric": metric,
        "sort": sort,
        "order": "desc" if wanted.descending else "asc",
        "per_page": str(per_page) if per_page != 50 else "",
    }

    def link(**changes: Any) -> str:
        values = {**query, **{k: str(v) for k, v in changes.items()}}
        kept = [(k, values[k]) for k in (*QUERY, "page") if values.get(k)]
        return "/jobs" + (f"?{urlencode(kept)}" if kept else "")

    def sort_link(key: str) -> str:
        """A column heading's link: by this column, or the other way round if it already is."""
        if sort == key:
            return link(order="asc" if wanted.descending else "desc", page="")
        return link(sort=key, order="", page="")

    number_now = wanted.offset // wanted.limit + 1
    pages = max(1, -(-found.total // wanted.limit))
    context = {
        "jobs": found.jobs,
        "total": found.total,
        "page_number": number_now,
        "pages": pages,
        "prev_link": link(page=number_now - 1) if number_now > 1 else None,
        "next_link": link(page=number_now + 1) if number_now < pages else None,
        "link": link,
        "sort_link": sort_link,
        "query": query,
        "sort": sort,
        "descending": wanted.descending,
        "metric": wanted.metric,
        "metric_names": names
        if not wanted.metric or wanted.metric.name in names
        else [*names, wanted.metric.name],
        "states": [s.value for s in JobState],
        "models": list(BUILTIN_MODELS),
        "per_page_options": PER_PAGE,
        "per_page": per_page,
        "now": datetime.now(UTC),
        "duration": _duration,
        "params_of": _params,
    }
    fragment = request.headers.get("hx-request") and not request.headers.get(
        "hx-history-restore-request"
    )
    if not fragment:
        return page(request, signed, "jobs_list.html", context, section="jobs")
    response = page(request, signed, "jobs_table.html", context, section="jobs")
    # The address htmx pushes: this list's, without the form's empty fields.
    response.headers["HX-Push-Url"] = link(page=number_now if number_now > 1 else "")
    return response


# -- start a job ----------------------------------------------------------------------------


def parse_params(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (blank lines and ``#`` comments skipped); values stay strings,
    coerced by the service against the model's schema as for ``nimbus train --param``."""
    params: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"parameters, line {number}: {line[:80]!r} is not KEY=VALUE")
        if key in params:
            raise InvalidInput(f"parameters: {key[:80]!r} is given twice")
        params[key] = value.strip()
    return params


def submit_request(form: dict[str, str]) -> SubmitRequest:
    """The form as the REST route's body; each bad field a 400 naming it."""
    params = parse_params(form.get("params", ""))
    for key in ("epochs", "lr", "batch_size"):
        if value := form.get(key, "").strip():
            if key in params:
                raise InvalidInput(f"parameter {key!r} is given twice: in its field and below")
            params[key] = value
    body: dict[str, Any] = {
        "dataset": form.get("dataset", "").strip(),
        "model": form.get("model", "").strip(),
        "params": params,
    }
    for key in RESOURCES:
        if value := form.get(key, "").strip():
            body[key] = value
    try:
        return SubmitRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc.errors())) from None


def _new_form(
    request: Request, signed: Any, form: dict[str, str], message: str = "", status: int = 200
) -> Response:
    datasets = services_of(request).jobs.datasets.list_datasets(signed.principal)
    context = {
        "form": form,
        "message": message,
        "datasets": datasets,
        "models": list(BUILTIN_MODELS),
    }
    return page(request, signed, "job_new.html", context, status=status, section="jobs")


@router.get("/jobs/new")
def new_job_form(request: Request, signed: Browser, dataset: str = "") -> Response:
    require_role(signed.principal, Role.MEMBER)  # a viewer gets the 403 page, not the form
    defaults = {"dataset": dataset, "model": "cnn", "cpus": "1", "gpus": "0", "memory": "1G"}
    return _new_form(request, signed, {**defaults, "priority": "0"})


async def posted_form(request: Request) -> dict[str, str]:
    """The start form's fields as typed (read after the CSRF check, which read the form)."""
    raw = await request.form()
    return {k: v for k in (*FIELDS, *RESOURCES) if isinstance(v := raw.get(k, ""), str)}


@router.post("/jobs/new")
def start_job(
    request: Request, signed: Post, form: Annotated[dict[str, str], Depends(posted_form)]
) -> Response:
    try:
        body = submit_request(form)
        job = services_of(request).jobs.submit(signed.principal, body)
    except (InvalidInput, NotFound) as exc:  # the form again, as typed, with the reason
        return _new_form(request, signed, form, exc.message, status=exc.status)
    return redirect(f"/jobs/{job.id}")
