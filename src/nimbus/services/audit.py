"""The audit log: who did what, when, with which result."""

from __future__ import annotations

from typing import Any

from nimbus.db import audit
from nimbus.db.engine import Database
from nimbus.db.tables import AuditEvent as AuditRow
from nimbus.errors import InvalidInput
from nimbus.security import Principal, Role, as_utc, require_role
from nimbus.wire.audit import AuditEvent

MAX_LIMIT = 1000


def audit_view(row: AuditRow) -> AuditEvent:
    """A stored event as the API shows it (``at`` is when it was recorded)."""
    return AuditEvent(
        id=row.id,
        at=as_utc(row.created_at),
        actor=row.actor,
        token_id=row.token_id,
        action=row.action,
        resource=row.resource,
        status=row.status,
        detail=row.detail,
    )


class AuditService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        principal: Principal | None,
        action: str,
        resource: str,
        status: int,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Write one event; ``principal`` is None when the caller could not be identified."""
        with self.db.session(write=True) as session:
            audit.record(
                session,
                tenant_id=principal.tenant_id if principal else None,
                token_id=principal.token_id if principal else None,
                actor=principal.token_name if principal else None,
                action=action,
                resource=resource,
                status=status,
                detail=detail or None,
            )

    def list_events(self, principal: Principal, limit: int = 100) -> list[AuditEvent]:
        """Newest first, the caller's tenant only. Operators (admins of ``default``) also
        see events of callers that could not be identified (no tenant)."""
        require_role(principal, Role.ADMIN)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"invalid limit {limit}: use 1-{MAX_LIMIT}")
        with self.db.session() as session:
            rows = audit.list_events(
                session, principal.tenant_id, limit, include_unattributed=principal.is_operator
            )
            return [audit_view(row) for row in rows]
