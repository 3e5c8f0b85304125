"""Liveness: the one route that needs no token."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus import __version__
from nimbus.wire.health import Health, JobIsolation

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(request: Request) -> Health:
    """Liveness, the version of Nimbus that answers, and how it isolates jobs."""
    isolation = getattr(request.app.state, "job_isolation", None)
    jobs = None
    if isolation is not None:
        jobs = JobIsolation(
            mode=isolation.mode,
            runs_jobs=isolation.runs_jobs,
            detail=isolation.summary(),
            network=isolation.network,
        )
    return Health(status="ok", version=__version__, job_isolation=jobs)
