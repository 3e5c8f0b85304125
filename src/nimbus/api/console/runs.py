"""The runs' pages: what MLflow clients logged (docs/mlflow.md), newest first, and one run's
params, tags, latest metrics and files. Reached from the Jobs page; a job id opens the job
read as a run."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from nimbus.api.console.web import Browser, ConsoleRoute, page
from nimbus.api.state import services_of

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

LISTED = 200  # runs on the list page, newest first


@router.get("/runs")
def runs(request: Request, signed: Browser) -> Response:
    found = services_of(request).tracking.list_runs(signed.principal, None, LISTED)
    return page(request, signed, "runs.html", {"runs": found}, section="jobs")


@router.get("/runs/{run_id}")
def run(request: Request, signed: Browser, run_id: str) -> Response:
    [found] = services_of(request).tracking.tracked_runs(signed.principal, [run_id])
    return page(request, signed, "run.html", {"run": found}, section="jobs")
