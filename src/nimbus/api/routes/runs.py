"""Runs logged through the MLflow-compatible API, in Nimbus's own API: listed (newest
first, by experiment), shown, and compared side by side with jobs (a job id is a run id)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from nimbus.api.auth import Viewer
from nimbus.api.state import services_of
from nimbus.errors import InvalidInput
from nimbus.wire.tracking import TrackedRun, TrackedRunList

router = APIRouter(tags=["runs"])
MAX_COMPARED = 20


@router.get("/runs", response_model=TrackedRunList)
def list_runs(
    principal: Viewer,
    request: Request,
    experiment: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TrackedRunList:
    return TrackedRunList(
        runs=services_of(request).tracking.list_runs(principal, experiment, limit)
    )


@router.get("/runs/compare", response_model=TrackedRunList)
def compare_runs(principal: Viewer, request: Request, ids: str = "") -> TrackedRunList:
    """Runs and jobs by id (comma-separated), in that order."""
    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    if not wanted or len(wanted) > MAX_COMPARED:
        raise InvalidInput(f"give 1 to {MAX_COMPARED} run or job ids in ids=ID,ID,...")
    return TrackedRunList(runs=services_of(request).tracking.tracked_runs(principal, wanted))


@router.get("/runs/{run_id}", response_model=TrackedRun)
def get_run(run_id: str, principal: Viewer, request: Request) -> TrackedRun:
    [found] = services_of(request).tracking.tracked_runs(principal, [run_id])
    return found
