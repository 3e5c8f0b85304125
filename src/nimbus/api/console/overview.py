"""The overview: running and queued jobs, recent activity, deployments and their health."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from nimbus.api.console.web import Browser, ConsoleRoute, page
from nimbus.api.state import services_of

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@router.get("/")
def overview(request: Request, signed: Browser) -> Response:
    services = services_of(request)
    me = signed.principal
    context = {
        "active": services.jobs.list_jobs(me, state="running,queued", limit=50).jobs,
        "recent": services.jobs.list_jobs(me, limit=10).jobs,
        "activity": services.audit.recent_activity(me, limit=15),
        "deployments": services.deployments.list_deployments(me),
        "datasets": len(services.datasets.list_datasets(me)),
        "models": len(services.models.list_models(me)),
    }
    return page(request, signed, "overview.html", context, section="overview")
