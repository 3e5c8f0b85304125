"""The audit log (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus.api.auth import Admin
from nimbus.api.state import services_of
from nimbus.wire.audit import AuditLog

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=AuditLog)
def list_audit(principal: Admin, request: Request, limit: int = 100) -> AuditLog:
    """The newest ``limit`` events of the caller's tenant."""
    return AuditLog(events=services_of(request).audit.list_events(principal, limit))
