"""Liveness: the one route that needs no token."""

from __future__ import annotations

from fastapi import APIRouter

from nimbus import __version__
from nimbus.wire.health import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness, and the version of Nimbus that answers."""
    return Health(status="ok", version=__version__)
