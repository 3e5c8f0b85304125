"""The services an app serves with, kept on ``app.state`` and reached from a request."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from nimbus.config import Settings
from nimbus.db.engine import Database
from nimbus.services.audit import AuditService
from nimbus.services.datasets import DatasetService
from nimbus.services.tokens import TokenService
from nimbus.storage.blobs import BlobStore


@dataclass
class Services:
    settings: Settings
    db: Database
    blobs: BlobStore
    tokens: TokenService
    audit: AuditService
    datasets: DatasetService


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
