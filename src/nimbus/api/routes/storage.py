"""The blob store's garbage (operators): ``POST /storage/sweep`` runs a sweep now."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus.api.auth import Admin
from nimbus.api.state import services_of
from nimbus.wire.storage import SweepReport, SweepRequest

router = APIRouter(tags=["storage"])


@router.post("/storage/sweep", response_model=SweepReport)
def sweep(principal: Admin, request: Request, body: SweepRequest | None = None) -> SweepReport:
    """Delete blobs nothing refers to, expired upload pins and stale staging files, as the
    periodic sweep does (operators only)."""
    grace = body.grace_seconds if body is not None else None
    return services_of(request).garbage.sweep_for(principal, grace)
