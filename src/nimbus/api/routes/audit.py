"""The audit log (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from nimbus.api.auth import Admin
from nimbus.api.state import services_of

router = APIRouter(tags=["audit"])


@router.get("/audit")
def list_audit(principal: Admin, request: Request, limit: int = 100) -> dict[str, Any]:
    return {"events": services_of(request).audit.list_events(principal, limit)}
