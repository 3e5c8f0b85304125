"""Audit log repository: one row per mutating request, refused ones included."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from nimbus.db.tables import AuditEvent


def record(
    session: Session,
    *,
    tenant_id: int | None,
    token_id: str | None,
    actor: str | None,
    action: str,
    resource: str,
    status: int,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    event = AuditEvent(
        tenant_id=tenant_id,
        token_id=token_id,
        actor=actor[:128] if actor else actor,
        action=action[:16],
        resource=resource[:512],
        status=status,
        detail=detail,
    )
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session,
    tenant_id: int,
    limit: int,
    *,
    include_unattributed: bool = False,
    token_id: str | None = None,
    before: int | None = None,
    action: str | None = None,
    status: int | None = None,
) -> list[AuditEvent]:
    """Newest first. ``include_unattributed`` adds events of callers with no known tenant;
    ``token_id`` keeps only the events of that token's calls; ``before`` those older than
    that event id (the next page), ``action`` and ``status`` those with that action (HTTP
    method) and status."""
    where = AuditEvent.tenant_id == tenant_id
    if include_unattributed:
        where = or_(where, AuditEvent.tenant_id.is_(None))
    if token_id is not None:
        where = and_(where, AuditEvent.token_id == token_id)
    if before is not None:
        where = and_(where, AuditEvent.id < before)
    if action is not None:
        where = and_(where, AuditEvent.action == action)
    if status is not None:
        where = and_(where, AuditEvent.status == status)
    query = select(AuditEvent).where(where).order_by(AuditEvent.id.desc()).limit(limit)
    return list(session.scalars(query))


def set_detail(session: Session, event_id: int, detail: dict[str, Any]) -> None:
    """Replace an event's detail (the count of a summary row of refused calls)."""
    session.execute(update(AuditEvent).where(AuditEvent.id == event_id).values(detail=detail))


def delete_before(session: Session, cutoff: datetime, *, limit: int) -> int:
    """Delete up to ``limit`` of the oldest events recorded before ``cutoff``."""
    ids = select(AuditEvent.id).where(AuditEvent.created_at < cutoff).limit(limit)
    doomed = list(session.scalars(ids))
    if doomed:
        session.execute(delete(AuditEvent).where(AuditEvent.id.in_(doomed)))
    return len(doomed)
