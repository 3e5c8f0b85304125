"""The FastAPI application factory: services built once, routers mounted, errors as JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from nimbus import __version__
from nimbus.api import errors
from nimbus.api.audit_log import AuditMiddleware
from nimbus.api.routes import audit, datasets, health, tokens
from nimbus.api.state import Services
from nimbus.config import Settings
from nimbus.datasets.model import IngestLimits
from nimbus.db.engine import Database
from nimbus.services.audit import AuditService
from nimbus.services.datasets import DatasetService, IngestFn
from nimbus.services.tokens import TokenService
from nimbus.storage.base import ObjectStore
from nimbus.storage.blobs import BlobStore
from nimbus.storage.factory import open_object_store

API_PREFIX = "/api/v1"


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
    return Services(
        settings=settings,
        db=db,
        blobs=blobs,
        tokens=TokenService(db),
        audit=AuditService(db),
        datasets=DatasetService(
            db, blobs, tmp_dir=settings.tmp_dir, limits=ingest_limits(settings), ingest_fn=ingest_fn
        ),
    )


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The control plane's ASGI app. ``services`` defaults to those ``settings`` name."""
    services = services if services is not None else build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        services.db.dispose()

    app = FastAPI(title="Nimbus", version=__version__, lifespan=lifespan)
    app.state.services = services
    errors.install(app)
    app.add_middleware(AuditMiddleware, audit=services.audit)
    app.include_router(health.router)
    for module in (tokens, audit, datasets):
        app.include_router(module.router, prefix=API_PREFIX)
    return app
