"""The FastAPI application over a set of services: routers mounted, errors as JSON, the
audit log, and background work started and stopped with the app.

The services themselves (and the background work: scheduler, deployment loop) are assembled
in one place, :func:`nimbus.server.build_app`; this module only serves them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Scope

from nimbus import __version__
from nimbus.api import console as web_console
from nimbus.api import errors
from nimbus.api.audit_log import AuditMiddleware
from nimbus.api.context import AuditContext
from nimbus.api.routes import (
    audit,
    cards,
    cluster,
    code,
    console,
    datasets,
    health,
    job_api,
    jobs,
    mlflow_artifacts,
    mlflow_registry,
    mlflow_tracking,
    quotas,
    runs,
    storage,
    studies,
    tokens,
    uploads,
)
from nimbus.api.routes import deployments as deployment_routes
from nimbus.api.routes import models as model_routes
from nimbus.api.state import Background, Services

API_PREFIX = "/api/v1"
JOB_API_PREFIX = API_PREFIX + "/job-api/"


class _Audit(AuditMiddleware):
    """The audit log, less the routine traffic of job processes: job API requests (leases,
    metrics, progress, checkpoints) are recorded only when refused."""

    async def _record(self, scope: Scope, ctx: AuditContext, status: int) -> None:
        if status < 400 and str(scope.get("path", "")).startswith(JOB_API_PREFIX):
            return
        await super()._record(scope, ctx, status)


def create_app(services: Services, background: Sequence[Background] = ()) -> FastAPI:
    """The control plane's ASGI app serving ``services``. ``background`` (the scheduler, the
    deployment loop) starts with the app, in order, and stops in reverse order when it shuts
    down, before the services' database is closed."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started: list[Background] = []
        try:
            for work in background:
                work.start()
                started.append(work)
            yield
        finally:
            services.stopping.set()
            for work in reversed(started):
                work.stop()
            services.db.dispose()

    app = FastAPI(title="Nimbus", version=__version__, lifespan=lifespan)
    app.state.services = services
    errors.install(app)
    app.add_middleware(_Audit, audit=services.audit)
    app.include_router(health.router)
    for module in (
        tokens,
        audit,
        cluster,
        console,
        quotas,
        datasets,
        uploads,
        code,
        jobs,
        runs,
        studies,
        job_api,
        model_routes,
        cards,
        deployment_routes,
        storage,
    ):
        app.include_router(module.router, prefix=API_PREFIX)
    # MLflow's own paths (/api/2.0/mlflow/...), for the MLflow client.
    for mlflow in (mlflow_tracking, mlflow_registry, mlflow_artifacts):
        app.include_router(mlflow.router)
    web_console.install(app)
    return app
