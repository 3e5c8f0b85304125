"""The audit log: ``GET /audit``."""

from __future__ import annotations

from typing import Any

from nimbus.wire.base import Response, Timestamp


class AuditEvent(Response):
    """One recorded call. ``actor`` and ``token_id`` are None for callers that could not be
    identified; ``detail`` holds ``client``, ``query`` and ``error`` when there are any."""

    id: int
    at: Timestamp
    actor: str | None
    token_id: str | None
    action: str
    resource: str
    status: int
    detail: dict[str, Any] | None


class AuditLog(Response):
    """``GET /audit``: newest first."""

    events: list[AuditEvent]
