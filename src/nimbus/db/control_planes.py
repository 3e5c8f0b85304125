"""Control planes sharing the metadata store, and the scheduler's leader lease.

Every server registers itself (:func:`register`) and heartbeats; one of them holds the
lease (:func:`elect`) and runs the scheduler. The lease's epoch grows by one at every change
of holder: :func:`check_fence`, called inside each scheduler write's transaction, refuses a
write whose epoch is no longer the current one. It reads the lease row with a share lock, and
:func:`elect` changes holders under an update lock, so a write and a takeover serialise: a
write that committed before the takeover was the old leader's; any later one is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from nimbus.db.tables import (
    ControlPlaneRow,
    JobAttemptRow,
    JobRow,
    LeaderLeaseRow,
    Tenant,
)
from nimbus.jobs.domain import AttemptState, Deposed, Fence, JobState

SCHEDULER = "scheduler"


@dataclass(frozen=True)
class ControlPlane:
    id: str
    url: str
    hostname: str
    pid: int
    executor: str
    capacity: dict[str, Any]
    jobs_dir: str
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class LeaderLease:
    holder: str | None
    epoch: int
    acquired_at: datetime | None
    expires_at: datetime


def register(session: Session, plane: ControlPlane) -> None:
    """Insert or refresh this control plane's row (its heartbeat)."""
    row = session.get(ControlPlaneRow, plane.id)
    if row is None:
        session.add(ControlPlaneRow(**plane.__dict__))
        return
    for name, value in plane.__dict__.items():
        setattr(row, name, value)


def heartbeat(session: Session, plane_id: str, now: datetime) -> bool:
    """Mark ``plane_id`` alive at ``now``; False when its row is gone."""
    row = session.get(ControlPlaneRow, plane_id)
    if row is None:
        return False
    row.heartbeat_at = now
    return True


def unregister(session: Session, plane_id: str) -> None:
    row = session.get(ControlPlaneRow, plane_id)
    if row is not None:
        session.delete(row)


def list_planes(session: Session) -> list[ControlPlane]:
    rows = session.scalars(select(ControlPlaneRow).order_by(ControlPlaneRow.started_at))
    return [_plane(row) for row in rows]


def get_plane(session: Session, plane_id: str) -> ControlPlane | None:
    row = session.get(ControlPlaneRow, plane_id)
    return _plane(row) if row is not None else None


def _plane(row: ControlPlaneRow) -> ControlPlane:
    return ControlPlane(
        id=row.id,
        url=row.url,
        hostname=row.hostname,
        pid=row.pid,
        executor=row.executor,
        capacity=dict(row.capacity),
        jobs_dir=row.jobs_dir,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
    )


def leader(session: Session) -> LeaderLease:
    row = session.get(LeaderLeaseRow, SCHEDULER)
    if row is None:
        raise RuntimeError("the metadata store has no leader lease row: run its migrations")
    return LeaderLease(row.holder, row.epoch, row.acquired_at, row.expires_at)


def elect(
    session: Session, candidate: str, held: Fence | None, now: datetime, lease_seconds: float
) -> Fence | None:
    """One round of the election for ``candidate``, which holds ``held`` (None: it does not
    lead). It renews its lease if it still holds it; answers None if it held an epoch
    that is no longer current (deposed); takes it, with a new epoch, if the
    lease ran out or was left by an earlier run of the same candidate (a restart); else
    follows. Returns the fence it holds after the round, or None."""
    row = session.scalars(
        select(LeaderLeaseRow).where(LeaderLeaseRow.name == SCHEDULER).with_for_update()
    ).one()
    until = now + timedelta(seconds=lease_seconds)
    if held is not None and row.holder == held.holder and row.epoch == held.epoch:
        row.expires_at = until
        return held
    if held is not None:
        return None  # deposed: the caller stops scheduling first; a later round may retake it
    if row.expires_at > now and row.holder not in (None, candidate):
        return None  # another leads
    row.holder, row.epoch, row.acquired_at, row.expires_at = candidate, row.epoch + 1, now, until
    return Fence(candidate, row.epoch)


def resign(session: Session, fence: Fence) -> None:
    """Give the lease up now (a graceful stop), so another control plane takes it at once."""
    row = session.scalars(
        select(LeaderLeaseRow).where(LeaderLeaseRow.name == SCHEDULER).with_for_update()
    ).one()
    if row.holder == fence.holder and row.epoch == fence.epoch:
        row.holder = None
        row.expires_at = row.acquired_at or row.expires_at


def check_fence(session: Session, fence: Fence) -> None:
    """Refuse (:class:`Deposed`) the transaction of a scheduler write made under ``fence``
    unless it is still the current lease's. Call it first in the transaction."""
    row = session.scalars(
        select(LeaderLeaseRow).where(LeaderLeaseRow.name == SCHEDULER).with_for_update(read=True)
    ).one()
    if row.holder != fence.holder or row.epoch != fence.epoch:
        raise Deposed(
            f"scheduler {fence.holder!r} (epoch {fence.epoch}) no longer leads: "
            f"{row.holder!r} holds epoch {row.epoch}"
        )


@dataclass(frozen=True)
class TenantQueue:
    tenant: str
    queued: int
    running: int


def queue_depth(session: Session) -> list[TenantQueue]:
    """Queued and running jobs per tenant (tenants with neither are left out)."""
    states = (JobState.QUEUED.value, JobState.RUNNING.value)
    rows = session.execute(
        select(Tenant.name, JobRow.state, func.count())
        .join(Tenant, Tenant.id == JobRow.tenant_id)
        .where(JobRow.state.in_(states))
        .group_by(Tenant.name, JobRow.state)
    ).all()
    counts: dict[str, dict[str, int]] = {}
    for tenant, state, count in rows:
        counts.setdefault(tenant, {})[state] = count
    return [
        TenantQueue(tenant, c.get(JobState.QUEUED.value, 0), c.get(JobState.RUNNING.value, 0))
        for tenant, c in sorted(counts.items())
    ]


@dataclass(frozen=True)
class RunningAttempt:
    job_id: str
    attempt_id: str
    tenant: str
    owner: str | None
    cpus: float
    gpus: int
    memory_bytes: int
    workers: int
    lease_expires_at: datetime | None
    custom: dict[str, float] = field(default_factory=dict)  # per worker
    placed: dict[int, str] = field(default_factory=dict)  # rank -> node id (Ray executor)


def running_attempts(session: Session) -> list[RunningAttempt]:
    """Every running attempt, with what its job holds and the scheduler it is leased to."""
    rows = session.execute(
        select(JobAttemptRow, JobRow, Tenant.name)
        .join(JobRow, JobRow.id == JobAttemptRow.job_id)
        .join(Tenant, Tenant.id == JobRow.tenant_id)
        .where(JobAttemptRow.state == AttemptState.RUNNING.value)
        .order_by(JobAttemptRow.started_at)
    ).all()
    return [
        RunningAttempt(
            job_id=job.id,
            attempt_id=attempt.id,
            tenant=tenant,
            owner=attempt.lease_owner,
            cpus=job.cpus,
            gpus=job.gpus,
            memory_bytes=job.memory_bytes,
            workers=job.workers,
            lease_expires_at=attempt.lease_expires_at,
            custom=dict((job.spec.get("resources") or {}).get("custom") or {}),
            placed={int(w["rank"]): str(w["node"]) for w in json.loads(attempt.workers or "[]")},
        )
        for attempt, job, tenant in rows
    ]
