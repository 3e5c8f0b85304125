"""The services an app serves with, kept on ``app.state`` and reached from a request.

They are built in one place, :func:`nimbus.server.build_services`."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import Request

from nimbus.api.streams import StreamSlots
from nimbus.config import Settings
from nimbus.db.engine import Database
from nimbus.jobs.capacity import Capacity
from nimbus.services.audit import AuditService
from nimbus.services.cards import CardService
from nimbus.services.cluster import ClusterService
from nimbus.services.code import CodeService
from nimbus.services.console_sessions import ConsoleSessionService
from nimbus.services.datasets import DatasetService
from nimbus.services.deployments import DeploymentService
from nimbus.services.erasure import ErasureService
from nimbus.services.garbage import GarbageService
from nimbus.services.imports import ModelImports
from nimbus.services.job_api import JobApiService
from nimbus.services.jobs import JobService
from nimbus.services.models import ModelService
from nimbus.services.quotas import QuotaService
from nimbus.services.studies import StudyService
from nimbus.services.tokens import TokenService
from nimbus.services.tracking import TrackingService
from nimbus.services.tracking_files import TrackingFileService
from nimbus.services.tracking_registry import TrackingRegistryService
from nimbus.services.uploads import UploadService
from nimbus.storage.blobs import BlobStore


class Background(Protocol):
    """Work the app runs beside serving requests (the scheduler, the deployment loop):
    started when the app starts, stopped when it shuts down."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    tokens: TokenService
    audit: AuditService
    datasets: DatasetService
    code: CodeService
    jobs: JobService
    job_api: JobApiService
    studies: StudyService
    capacity: Capacity
    models: ModelService
    deployments: DeploymentService
    quotas: QuotaService
    garbage: GarbageService
    uploads: UploadService
    cluster: ClusterService
    erasure: ErasureService
    # Imports of models trained elsewhere (ONNX files); None where the app has none.
    imports: ModelImports | None = None
    # Set when the server begins to shut down: long-lived responses (log streams) end.
    stopping: threading.Event = field(default_factory=threading.Event)
    # Log streams each token has open (``settings.max_log_streams_per_token`` at most).
    log_streams: StreamSlots = field(init=False)
    # Model cards and datasheets: read from the metadata store alone.
    cards: CardService = field(init=False)
    # The console's sign-ins, each standing for an API token.
    console: ConsoleSessionService = field(init=False)
    # MLflow-compatible tracking: runs, their files, the MLflow model registry.
    tracking: TrackingService = field(init=False)
    tracking_files: TrackingFileService = field(init=False)
    tracking_registry: TrackingRegistryService = field(init=False)

    def __post_init__(self) -> None:
        self.log_streams = StreamSlots(self.settings.max_log_streams_per_token)
        self.cards = CardService(self.db)
        self.console = ConsoleSessionService(self.db, self.tokens)
        self.tracking = TrackingService(self.db)
        self.tracking_files = TrackingFileService(
            self.db,
            self.blobs,
            self.quotas,
            max_bytes=min(self.settings.max_upload_bytes, self.settings.max_artifact_bytes),
        )
        self.tracking_registry = TrackingRegistryService(self.db)


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
