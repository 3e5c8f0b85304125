"""The FastAPI application factory: services built once, routers mounted, errors as JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Scope

from nimbus import __version__
from nimbus.api import errors
from nimbus.api.audit_log import AuditMiddleware
from nimbus.api.context import AuditContext
from nimbus.api.routes import audit, code, datasets, health, job_api, jobs, tokens
from nimbus.api.routes import deployments as deployment_routes
from nimbus.api.routes import models as model_routes
from nimbus.api.state import Background, Services
from nimbus.config import Settings
from nimbus.datasets.domain import IngestLimits
from nimbus.db.engine import Database
from nimbus.services.audit import AuditService
from nimbus.services.code import CodeService
from nimbus.services.datasets import DatasetService, IngestFn
from nimbus.services.deployments import DeploymentService
from nimbus.services.job_api import JobApiService
from nimbus.services.jobs import JobService, node_capacity
from nimbus.services.models import ModelService
from nimbus.services.tokens import TokenService
from nimbus.storage.base import ObjectStore
from nimbus.storage.blobs import BlobStore
from nimbus.storage.factory import open_object_store

API_PREFIX = "/api/v1"
JOB_API_PREFIX = API_PREFIX + "/job-api/"


def ingest_limits(settings: Settings) -> IngestLimits:
    return IngestLimits(
        max_unpacked_bytes=settings.max_unpacked_bytes,
        max_members=settings.max_archive_members,
        max_image_pixels=settings.max_image_pixels,
        max_compression_ratio=settings.max_compression_ratio,
    )


def build_services(
    settings: Settings,
    *,
    objects: ObjectStore | None = None,
    ingest_fn: IngestFn | None = None,
) -> Services:
    """Open the metadata store (already migrated: see ``nimbus.server.bootstrap``) and the
    blob store named by ``settings``, and build the services over them."""
    db = Database(settings.resolved_database_url)
    store = objects if objects is not None else open_object_store(settings.resolved_storage_url)
    blobs = BlobStore(store, settings.tmp_dir / "staging")
    datasets = DatasetService(
        db, blobs, tmp_dir=settings.tmp_dir, limits=ingest_limits(settings), ingest_fn=ingest_fn
    )
    code = CodeService(db, blobs, max_unpacked_bytes=settings.max_code_bytes * 4)
    capacity = node_capacity(
        settings.capacity_cpus, settings.capacity_gpus, settings.capacity_memory
    )
    models = ModelService(db, blobs, tmp_dir=settings.tmp_dir)
    return Services(
        settings=settings,
        db=db,
        blobs=blobs,
        tokens=TokenService(db),
        audit=AuditService(db),
        datasets=datasets,
        code=code,
        jobs=JobService(db, datasets, code, capacity),
        job_api=JobApiService(db, blobs, lease_seconds=settings.lease_seconds),
        capacity=capacity,
        models=models,
        deployments=DeploymentService(
            db, blobs, models, root=settings.deployments_dir, host=settings.host
        ),
    )


class _Audit(AuditMiddleware):
    """The audit log, less the routine traffic of job processes: job API requests (leases,
    metrics, progress, checkpoints) are recorded only when refused."""

    async def _record(self, scope: Scope, ctx: AuditContext, status: int) -> None:
        if status < 400 and str(scope.get("path", "")).startswith(JOB_API_PREFIX):
            return
        await super()._record(scope, ctx, status)


def create_app(
    settings: Settings, services: Services | None = None, background: Sequence[Background] = ()
) -> FastAPI:
    """The control plane's ASGI app. ``services`` defaults to those ``settings`` name;
    ``background`` (the scheduler) starts with the app and stops before its services close."""
    services = services if services is not None else build_services(settings)

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
    for module in (tokens, audit, datasets, code, jobs, job_api, model_routes, deployment_routes):
        app.include_router(module.router, prefix=API_PREFIX)
    return app
