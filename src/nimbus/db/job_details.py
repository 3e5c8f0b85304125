"""What job views need beyond the queue's :class:`~nimbus.jobs.domain.Job`: the inputs
resolved at submit, the latest progress, and the artifacts, for one job or a page of them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from nimbus.db import jobs as repo
from nimbus.db.tables import JobArtifactRow, JobAttemptRow, JobRow
from nimbus.jobs.domain import Job, JobState


@dataclass(frozen=True)
class Artifact:
    name: str
    blob_key: str
    size: int
    attempt_number: int


@dataclass(frozen=True)
class JobDetail:
    job: Job
    inputs: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] | None = None
    artifacts: tuple[Artifact, ...] = ()
    # Per attempt number, where its workers ran: [{"rank", "node", "address"}]
    workers: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def _details(session: Session, jobs: Sequence[Job]) -> list[JobDetail]:
    ids = [job.id for job in jobs]
    if not ids:
        return []
    extras = {
        job_id: (inputs, progress)
        for job_id, inputs, progress in session.execute(
            select(JobRow.id, JobRow.inputs, JobRow.progress).where(JobRow.id.in_(ids))
        ).tuples()
    }
    artifacts: dict[str, list[Artifact]] = {}
    for row in session.scalars(
        select(JobArtifactRow).where(JobArtifactRow.job_id.in_(ids)).order_by(JobArtifactRow.name)
    ):
        artifacts.setdefault(row.job_id, []).append(
            Artifact(row.name, row.blob_key, row.size, row.attempt_number)
        )
    workers: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for job_id, number, placed in session.execute(
        select(JobAttemptRow.job_id, JobAttemptRow.number, JobAttemptRow.workers).where(
            JobAttemptRow.job_id.in_(ids), JobAttemptRow.workers.is_not(None)
        )
    ).tuples():
        workers.setdefault(job_id, {})[number] = json.loads(placed or "[]")
    details = []
    for job in jobs:
        inputs, progress = extras.get(job.id, (None, None))
        details.append(
            JobDetail(
                job,
                inputs or {},
                progress,
                tuple(artifacts.get(job.id, ())),
                workers.get(job.id, {}),
            )
        )
    return details


def get(session: Session, job_id: str, tenant_id: int) -> JobDetail | None:
    """One job of the tenant, or None (also for another tenant's job)."""
    job = repo.get(session, job_id, tenant_id)
    return _details(session, [job])[0] if job is not None else None


def list_page(
    session: Session,
    tenant_id: int,
    *,
    states: Iterable[JobState] | None = None,
    limit: int = 100,
) -> list[JobDetail]:
    """The tenant's jobs, newest first."""
    return _details(session, repo.list_jobs(session, tenant_id, states=states, limit=limit))


def artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    row = session.scalars(
        select(JobArtifactRow).where(JobArtifactRow.job_id == job_id, JobArtifactRow.name == name)
    ).first()
    return Artifact(row.name, row.blob_key, row.size, row.attempt_number) if row else None


def poll_state(session: Session, job_id: str) -> tuple[JobState, str | None, Any] | None:
    """(state, exit reason, progress) of a job, or None: what a log follower polls."""
    found = session.execute(
        select(JobRow.state, JobRow.exit_reason, JobRow.progress).where(JobRow.id == job_id)
    ).first()
    return (JobState(found[0]), found[1], found[2]) if found else None


def inputs(session: Session, job_id: str) -> dict[str, Any]:
    """What the job reads, as resolved at submit."""
    return session.scalar(select(JobRow.inputs).where(JobRow.id == job_id)) or {}
