"""AutoML jobs that register their winner (migration 0022): one row per job submitted with
``register``, written in the job's own submit transaction, ``pending`` until the server has
settled it once the job ended (:mod:`nimbus.services.automl_register`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from nimbus.db.tables import Base, JobRow, UTCDateTime
from nimbus.jobs.domain import JobState

PENDING = "pending"  # the job has not ended, or its end is not yet settled
REGISTERED = "registered"  # its model is a version of the name (``version``)
FAILED = "failed"  # registering was refused (``reason``): the job's model stays unregistered
SKIPPED = "skipped"  # the job did not succeed: nothing to register


class AutomlRegistrationRow(Base):
    __tablename__ = "automl_registrations"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    name: Mapped[str] = mapped_column(String(255))  # the model name to register under
    state: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


def add(session: Session, job_id: str, tenant_id: int, name: str, now: datetime) -> None:
    """Ask for ``job_id``'s model to be registered as ``name`` when it succeeds."""
    session.add(
        AutomlRegistrationRow(
            job_id=job_id, tenant_id=tenant_id, name=name, state=PENDING, created_at=now
        )
    )
    session.flush()


def due(session: Session, limit: int = 100) -> list[str]:
    """Jobs whose registration is pending and which have ended, oldest first."""
    ended = [s.value for s in JobState if s.terminal]
    query = (
        select(AutomlRegistrationRow.job_id)
        .join(JobRow, JobRow.id == AutomlRegistrationRow.job_id)
        .where(AutomlRegistrationRow.state == PENDING, JobRow.state.in_(ended))
        .order_by(AutomlRegistrationRow.created_at)
        .limit(limit)
    )
    return list(session.scalars(query))


def get(session: Session, job_id: str, *, lock: bool = False) -> AutomlRegistrationRow | None:
    query = select(AutomlRegistrationRow).where(AutomlRegistrationRow.job_id == job_id)
    return session.scalars(query.with_for_update() if lock else query).first()


def settle(
    session: Session,
    row: AutomlRegistrationRow,
    state: str,
    now: datetime,
    *,
    version: int | None = None,
    reason: str | None = None,
) -> None:
    row.state, row.version, row.reason, row.settled_at = state, version, reason, now


def note_on_job(session: Session, job_id: str, registered: dict[str, Any]) -> None:
    """Keep the outcome with the job's AutoML leaderboard (``evaluation.automl.registered``),
    where every view of the job shows it."""
    job = session.scalars(select(JobRow).where(JobRow.id == job_id).with_for_update()).first()
    if job is None:
        return
    result = dict(job.result or {})
    evaluation = dict(result.get("evaluation") or {})
    evaluation["automl"] = {**dict(evaluation.get("automl") or {}), "registered": registered}
    result["evaluation"] = evaluation
    job.result = result  # a new object: the JSON column sees the change
