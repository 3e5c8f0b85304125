"""The audit log's rate limit on anonymous refusals and its retention, step by step with an
injected clock over a real metadata store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nimbus.db import audit as repo
from nimbus.db.engine import Database
from nimbus.db.tables import AuditEvent
from nimbus.services import audit as audit_module
from nimbus.services.audit import AuditService, AuditSweep


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def rows(db: Database) -> list[AuditEvent]:
    with db.session() as session:
        return list(session.query(AuditEvent).order_by(AuditEvent.id))


def refuse(service: AuditService, client: str | None, times: int) -> None:
    for _ in range(times):
        service.record_refused(client, "POST", "/api/v1/tokens", 401, {"client": client})


def test_refusals_past_the_rate_fold_into_one_summary_per_client_and_minute(db: Database) -> None:
    clock = Clock(1_800_000_000.0)  # the start of a minute
    service = AuditService(db, refused_per_minute=2, clock=clock)
    refuse(service, "10.0.0.1", 5)
    refuse(service, "10.0.0.2", 1)
    refuse(service, None, 3)
    stored = rows(db)
    assert len(stored) == 2 + 1 + 1 + 2 + 1  # per client: the first two, then a summary
    summary = next(
        r
        for r in stored
        if r.detail and r.detail.get("client") == "10.0.0.1" and "refused" in r.detail
    )
    assert summary.detail == {"client": "10.0.0.1", "refused": 1, "minute": "2027-01-15T08:00:00Z"}
    service.flush()
    with db.session() as session:
        fresh = session.get(AuditEvent, summary.id)
        assert fresh is not None and fresh.detail is not None and fresh.detail["refused"] == 3
    # The next minute starts over; the finished minute is forgotten once flushed.
    clock.now += 60
    refuse(service, "10.0.0.1", 1)
    service.flush()
    assert set(service._refusals) == {("10.0.0.1", int(clock.now // 60))}
    assert len(rows(db)) == len(stored) + 1


def test_too_many_addresses_share_one_summary(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "MAX_CLIENTS", 3)
    service = AuditService(db, refused_per_minute=1, clock=Clock(1_800_000_000.0))
    for n in range(10):
        refuse(service, f"10.0.1.{n}", 1)
    summaries = [r for r in rows(db) if r.detail and "refused" in r.detail]
    assert [s.detail["client"] for s in summaries if s.detail] == [audit_module.ANY_CLIENT]
    assert len(rows(db)) == 3 + 1 + 1  # three tracked addresses, then "*": one row, a summary


def test_retention_sweep_deletes_only_old_events(db: Database) -> None:
    now = datetime(2027, 1, 15, tzinfo=UTC)
    with db.session(write=True) as session:
        for age in (40, 31, 29, 1):
            event = repo.record(
                session,
                tenant_id=None,
                token_id=None,
                actor=f"{age}d",
                action="POST",
                resource="/x",
                status=201,
            )
            event.created_at = now - timedelta(days=age)
    kept_forever = AuditService(db, retention_days=None, clock=lambda: now.timestamp())
    assert kept_forever.purge() == 0
    service = AuditService(db, retention_days=30, clock=lambda: now.timestamp())
    sweep = AuditSweep(service, interval=3600)
    sweep.sweep()
    assert [r.actor for r in rows(db)] == ["29d", "1d"]
    sweep.start()
    sweep.stop()  # ends at once; flushes on the way out


def test_ids_freed_by_the_sweep_are_never_given_again(db: Database) -> None:
    """Once every event is past the retention, the next one still gets a new id (SQLite
    would otherwise start again from the highest id left, here 1)."""
    now = datetime(2027, 1, 15, tzinfo=UTC)

    def record(actor: str, age_days: int) -> int:
        with db.session(write=True) as session:
            event = repo.record(
                session,
                tenant_id=None,
                token_id=None,
                actor=actor,
                action="POST",
                resource="/x",
                status=201,
            )
            event.created_at = now - timedelta(days=age_days)
            session.flush()
            return event.id

    first = [record(f"old{i}", 40) for i in range(3)]
    assert AuditService(db, retention_days=30, clock=lambda: now.timestamp()).purge() == 3
    assert rows(db) == []
    assert record("new", 0) > max(first)
