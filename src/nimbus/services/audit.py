"""The audit log: who did what, when, with which result.

Refused calls of callers that could not be identified (no token, an unknown one) cost an
attacker nothing, so they are rate-limited per client address: the first
``refused_per_minute`` of a minute are written one row each, the rest of that minute fold
into one summary row (``detail.refused``: how many, ``detail.minute``: which minute) whose
count :meth:`AuditService.flush` brings up to date. :class:`AuditSweep` flushes, and deletes
events older than the retention period, on a timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nimbus.db import audit
from nimbus.db.engine import Database
from nimbus.db.tables import AuditEvent as AuditRow
from nimbus.errors import InvalidInput
from nimbus.security import Principal, Role, as_utc, require_role
from nimbus.ticker import Ticker
from nimbus.wire.audit import AuditEvent

log = logging.getLogger(__name__)
MAX_LIMIT = 1000
# Client addresses tracked per minute; past it (an attacker with many addresses) the rest
# share one summary row under the address "*".
MAX_CLIENTS = 10_000
ANY_CLIENT = "*"


@dataclass
class _Refusals:
    """Refused anonymous calls of one client address in one minute."""

    count: int = 0
    summary_id: int | None = None  # the summary row, once written
    flushed: int = 0  # the count the summary row holds


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
    def __init__(
        self,
        db: Database,
        *,
        refused_per_minute: int = 10,
        retention_days: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.refused_per_minute = refused_per_minute
        self.retention_days = retention_days
        self._clock = clock
        self._refusals: dict[tuple[str, int], _Refusals] = {}
        self._lock = threading.Lock()

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

    def record_refused(
        self, client: str | None, action: str, resource: str, status: int, detail: dict[str, Any]
    ) -> None:
        """A refused call of a caller that could not be identified: one row each up to
        ``refused_per_minute`` per client address and minute, then one summary row."""
        minute = int(self._clock() // 60)
        address = client or "unknown"
        with self._lock:
            key = (address, minute)
            if key not in self._refusals and len(self._refusals) >= MAX_CLIENTS:
                key = (ANY_CLIENT, minute)
            entry = self._refusals.setdefault(key, _Refusals())
            entry.count += 1
            count = entry.count
        if count <= self.refused_per_minute:
            self.record(None, action, resource, status, detail)
        elif count == self.refused_per_minute + 1:
            summary = self._summary(key[0], minute, count - self.refused_per_minute)
            with self.db.session(write=True) as session:
                row = audit.record(
                    session,
                    tenant_id=None,
                    token_id=None,
                    actor=None,
                    action=action,
                    resource=resource,
                    status=status,
                    detail=summary,
                )
                row_id = row.id
            with self._lock:
                entry.summary_id, entry.flushed = row_id, 1

    def flush(self) -> None:
        """Bring the summary rows' counts up to date; forget minutes that are over."""
        with self._lock:
            due = [
                (key, entry, entry.count - self.refused_per_minute)
                for key, entry in self._refusals.items()
                if entry.summary_id is not None
                and entry.count - self.refused_per_minute > entry.flushed
            ]
        for (client, minute), entry, refused in due:
            assert entry.summary_id is not None  # due only once its row exists
            with self.db.session(write=True) as session:
                audit.set_detail(session, entry.summary_id, self._summary(client, minute, refused))
            with self._lock:
                entry.flushed = max(entry.flushed, refused)
        now = int(self._clock() // 60)
        with self._lock:
            over = [
                key
                for key, entry in self._refusals.items()
                if key[1] < now
                and (
                    entry.count <= self.refused_per_minute
                    or entry.flushed == entry.count - self.refused_per_minute
                )
            ]
            for key in over:
                del self._refusals[key]

    @staticmethod
    def _summary(client: str, minute: int, refused: int) -> dict[str, Any]:
        start = datetime.fromtimestamp(minute * 60, UTC)
        return {
            "client": client,
            "refused": refused,
            "minute": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def purge(self) -> int:
        """Delete the events older than ``retention_days``; returns how many."""
        if self.retention_days is None:
            return 0
        cutoff = datetime.fromtimestamp(self._clock(), UTC) - timedelta(days=self.retention_days)
        deleted = 0
        while True:  # in batches: a long delete would hold SQLite's write lock
            with self.db.session(write=True) as session:
                batch = audit.delete_before(session, cutoff, limit=5000)
            deleted += batch
            if batch < 5000:
                return deleted

    def list_events(
        self,
        principal: Principal,
        limit: int = 100,
        *,
        before: int | None = None,
        action: str | None = None,
        status: int | None = None,
    ) -> list[AuditEvent]:
        """Newest first, the caller's tenant only (``before``: older than that event id;
        ``action``, ``status``: only those). Operators (admins of ``default``) also see
        events of callers that could not be identified (no tenant)."""
        require_role(principal, Role.ADMIN)
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"invalid limit {limit}: use 1-{MAX_LIMIT}")
        with self.db.session() as session:
            rows = audit.list_events(
                session,
                principal.tenant_id,
                limit,
                include_unattributed=principal.is_operator,
                before=before,
                action=action,
                status=status,
            )
            return [audit_view(row) for row in rows]

    def recent_activity(self, principal: Principal, limit: int = 20) -> list[AuditEvent]:
        """What happened lately, as far as the caller may see: an admin sees the tenant's
        events, anyone else the calls made with their own token."""
        if principal.role.includes(Role.ADMIN):
            return self.list_events(principal, limit)
        with self.db.session() as session:
            rows = audit.list_events(
                session, principal.tenant_id, limit, token_id=principal.token_id
            )
            return [audit_view(row) for row in rows]


class AuditSweep:
    """Background work of the audit log (see :class:`~nimbus.api.state.Background`): at
    start and every ``interval`` seconds, flush the summary rows of refused calls and delete
    the events past the retention period; flush once more at stop."""

    def __init__(self, audit_service: AuditService, interval: float) -> None:
        self.audit = audit_service
        self._ticker = Ticker("audit-sweep", interval, self.sweep, first_now=True)

    def sweep(self) -> None:
        """One round (a failure is logged by the ticker and the next round tries again)."""
        self.audit.flush()
        if purged := self.audit.purge():
            log.info("deleted %d audit events past the retention period", purged)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()
        self.audit.flush()
