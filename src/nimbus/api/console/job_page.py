"""A job's page (live log tail and curves over server-sent events, evaluation, confusion
matrix, attempts, cancel) and the comparison of 2-5 jobs.

The page renders what the job holds now; ``static/job.js`` then follows
``/jobs/{id}/events``, which polls the store like the REST log stream (the same per-token
limit on open streams) and sends only what is new: log chunks after the last seq, metric
points after the last id, progress and state changes, and ``end`` once the job ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from nimbus.api.console import job_views as views
from nimbus.api.console.web import Browser, ConsoleRoute, Post, page, redirect
from nimbus.api.state import Services, services_of
from nimbus.api.streams import LimitedStream, Polled, event_stream, paced, sse_event
from nimbus.errors import InvalidInput
from nimbus.names import MAX_INT64
from nimbus.services.job_watch import LOG_BATCH, METRIC_BATCH, JobWatch, WatchPoll

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


def _last(values: list[Any], attr: str) -> int:
    return int(getattr(values[-1], attr)) if values else 0


@router.get("/jobs/compare", response_class=HTMLResponse)
def compare_page(
    request: Request, signed: Browser, ids: Annotated[list[str] | None, Query()] = None
) -> HTMLResponse:
    wanted = [part.strip() for value in ids or [] for part in value.split(",") if part.strip()]
    runs = JobWatch(services_of(request).jobs).compare(signed.principal, wanted)
    jobs = [job for job, _ in runs]
    context = {
        "jobs": jobs,
        "charts": views.compare_charts([(job.id, points) for job, points in runs]),
        "metrics": views.side_rows([views.metric_summary(job, pts) for job, pts in runs]),
        "params": views.side_rows([views.param_summary(job) for job in jobs]),
        "matrices": [(job, views.confusion(job.evaluation)) for job in jobs],
    }
    return page(request, signed, "job_compare.html", context, section="jobs")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, request: Request, signed: Browser) -> HTMLResponse:
    snap = JobWatch(services_of(request).jobs).snapshot(signed.principal, job_id)
    job = snap.job
    live = {
        "events": f"/jobs/{job.id}/events",
        "log_after": _last(snap.log_tail, "seq"),
        "metric_after": _last(snap.metrics, "id"),
        "state": job.state,
        "live": not job.state.terminal,
    }
    context = {
        "job": job,
        "attempts": snap.attempts,
        "log": "".join(chunk.data for chunk in snap.log_tail),
        "log_cut": bool(snap.log_tail) and snap.log_tail[0].seq > 1,
        "charts": views.job_charts(snap.metrics),
        "live": live,
        "evaluation": views.evaluation_rows(job.evaluation),
        "per_class": views.per_class(job.evaluation),
        "confusion": views.confusion(job.evaluation),
    }
    return page(request, signed, "job.html", context, section="jobs")


@router.post("/jobs/{job_id}/cancel", response_class=RedirectResponse)
def cancel_job(job_id: str, request: Request, signed: Post) -> RedirectResponse:
    job = services_of(request).jobs.cancel(signed.principal, job_id)
    return redirect(f"/jobs/{job.id}")


def _position(last_event_id: str | None, log: int, metric: int) -> tuple[int, int]:
    """Where a stream starts: the page's ``log``/``metric`` positions, or, when the browser
    reconnects, the ``Last-Event-ID`` it saw last (``LOG-METRIC``)."""
    if last_event_id is None:
        return log, metric
    parts = last_event_id.strip().split("-")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 19 for p in parts):
        raise InvalidInput(
            f"invalid Last-Event-ID {last_event_id[:40]!r}: use LOG-METRIC (two numbers)"
        )
    return max(log, int(parts[0])), max(metric, int(parts[1]))


@router.get("/jobs/{job_id}/events")
def job_events(
    job_id: str,
    request: Request,
    signed: Browser,
    log: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    metric: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> LimitedStream:
    """Server-sent events until the job ends: ``log`` (chunks), ``metrics`` (points as
    ``[attempt, step, name, value]``), ``progress``, ``state``, and a last ``end``. Each
    event's id is ``LOG-METRIC``, where a reconnecting browser resumes."""
    services = services_of(request)
    job = services.jobs.get(signed.principal, job_id)  # 404 before the stream starts
    log, metric = _position(last_event_id, log, metric)
    slot = services.log_streams.acquire(signed.principal.token_id)
    return event_stream(follow(services, job.id, job.state.value, log, metric), slot)


def poll_events(poll: WatchPoll, state: str, progress: Any) -> list[tuple[str, Any]]:
    """What one poll adds to a stream whose page shows ``state`` and ``progress``."""
    out: list[tuple[str, Any]] = []
    if poll.state.value != state:
        out.append(("state", {"state": poll.state.value, "exit_reason": poll.exit_reason}))
    out += [("log", {"seq": c.seq, "attempt": c.attempt_number, "data": c.data}) for c in poll.logs]
    if poll.metrics:
        points = [
            [p.attempt_number, p.step, p.name, views.finite_or_none(p.value)] for p in poll.metrics
        ]
        out.append(("metrics", {"points": points}))
    if poll.progress is not None and poll.progress.model_dump() != progress:
        out.append(("progress", poll.progress.model_dump()))
    if poll.done:
        out.append(("end", {"state": poll.state.value, "exit_reason": poll.exit_reason}))
    return out


def follow(
    services: Services, job_id: str, state: str, log: int, metric: int
) -> AsyncIterator[bytes]:
    """The page's stream: what is new at each poll, until the job ended and everything was
    sent (then ``end``)."""
    watch = JobWatch(services.jobs)
    progress: Any = None

    async def poll() -> Polled:
        nonlocal state, log, metric, progress
        found = await run_in_threadpool(watch.poll, job_id, log, metric)
        news = poll_events(found, state, progress)
        state = found.state.value
        log, metric = max(log, _last(found.logs, "seq")), max(metric, _last(found.metrics, "id"))
        if found.progress is not None:
            progress = found.progress.model_dump()
        where = f"{log}-{metric}"
        full = len(found.logs) >= LOG_BATCH or len(found.metrics) >= METRIC_BATCH
        return Polled([sse_event(name, data, where) for name, data in news], found.done, full)

    return paced(services.stopping, poll)
