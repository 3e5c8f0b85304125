"""Training jobs: submit, list, show, cancel, logs (JSON or server-sent events), metrics,
artifacts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from nimbus.api.auth import Member, Viewer
from nimbus.api.downloads import FILE_RESPONSE, attachment
from nimbus.api.state import Services, services_of
from nimbus.api.streams import Polled, event_stream, paced, sse_event
from nimbus.names import MAX_INT64, parse_int
from nimbus.services.jobs import LOG_BATCH, chunk_view
from nimbus.wire.jobs import (
    Job,
    JobList,
    JobMetrics,
    LogEnd,
    LogEvent,
    LogPage,
    Progress,
    SubmitRequest,
)

router = APIRouter(tags=["jobs"])


@router.post("/jobs", status_code=201, response_model=Job)
def submit_job(body: SubmitRequest, principal: Member, request: Request) -> Job:
    return services_of(request).jobs.submit(principal, body)


@router.get("/jobs", response_model=JobList)
def list_jobs(
    principal: Viewer, request: Request, state: str | None = None, limit: int = 100
) -> JobList:
    return services_of(request).jobs.list_jobs(principal, state, limit)


@router.get("/jobs/compare", response_model=JobList)
def compare_jobs(principal: Viewer, request: Request, ids: str = "") -> JobList:
    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    return services_of(request).jobs.compare(principal, wanted)


@router.get("/jobs/{job_id}", response_model=Job)
def get_job(job_id: str, principal: Viewer, request: Request) -> Job:
    job = services_of(request).jobs.get(principal, job_id)
    isolation = getattr(request.app.state, "job_isolation", None)
    return job if isolation is None else job.model_copy(update={"isolation": isolation.mode})


@router.post("/jobs/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: str, principal: Member, request: Request) -> Job:
    return services_of(request).jobs.cancel(principal, job_id)


@router.get("/jobs/{job_id}/metrics", response_model=JobMetrics)
def job_metrics(job_id: str, principal: Viewer, request: Request) -> JobMetrics:
    return services_of(request).jobs.metrics(principal, job_id)


@router.get(
    "/jobs/{job_id}/artifacts/{name}",
    response_class=StreamingResponse,
    responses=FILE_RESPONSE,
)
def download_artifact(
    job_id: str, name: str, principal: Viewer, request: Request
) -> StreamingResponse:
    """An artifact's bytes (see the job's ``artifacts``), checked against its hash."""
    return attachment(services_of(request).jobs.download_artifact(principal, job_id, name))


@router.get(
    "/jobs/{job_id}/logs",
    response_model=LogPage,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def job_logs(
    job_id: str,
    principal: Viewer,
    request: Request,
    after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0,
    follow: bool = False,
    limit: Annotated[int, Query(ge=1, le=LOG_BATCH)] = LOG_BATCH,
    last_event_id: Annotated[str | None, Header()] = None,
) -> LogPage | StreamingResponse:
    """JSON chunks after ``after``; with ``follow=true`` server-sent events until the job
    ends (``Last-Event-ID`` resumes a dropped stream where it left off): ``log``
    (a log chunk, with its seq as the event id), ``progress``, and a last ``end``. A token
    follows at most ``max_log_streams_per_token`` streams at once (429 past it)."""
    services = services_of(request)
    if not follow:
        return services.jobs.logs(principal, job_id, after, limit)
    services.jobs.get(principal, job_id)  # 404 before the stream starts
    if last_event_id is not None:
        after = max(after, parse_int(last_event_id.strip(), "Last-Event-ID header"))
    slot = services.log_streams.acquire(principal.token_id)
    return event_stream(follow_logs(services, job_id, after), slot)


def sse(event: LogEvent, event_id: int | None = None) -> bytes:
    """One server-sent event of type ``event.event``."""
    return sse_event(event.event, event.model_dump(mode="json"), event_id)


def follow_logs(services: Services, job_id: str, after: int) -> AsyncIterator[bytes]:
    """The log stream's body: chunks after ``after``, progress changes, and ``event: end``
    once the job is terminal and every chunk was sent."""
    progress: Progress | None = None

    async def poll() -> Polled:
        nonlocal after, progress
        found = await run_in_threadpool(services.jobs.poll, job_id, after)
        out = [sse(chunk_view(c), c.seq) for c in found.chunks]
        if found.chunks:
            after = found.chunks[-1].seq
        if found.progress is not None and found.progress != progress:
            progress = found.progress
            out.append(sse(progress))
        if found.done:
            out.append(sse(LogEnd(state=found.state, exit_reason=found.exit_reason)))
        return Polled(out, found.done, len(found.chunks) >= LOG_BATCH)

    return paced(services.stopping, poll)
