"""What job views need beyond the queue's :class:`~nimbus.jobs.domain.Job`: the inputs
resolved at submit, the latest progress, and the artifacts, for one job or a page of them;
and the console's jobs list (:func:`list_sorted`): filtered, sorted and paged in SQL."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, distinct, func, literal_column, null, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from nimbus.db import jobs as repo
from nimbus.db.tables import (
    JobArtifactRow,
    JobAttemptRow,
    JobMetricRow,
    JobRow,
    StudyTrialRow,
)
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


# -- the console's jobs list --------------------------------------------------------------

Sort = Literal["created", "state", "metric"]


@dataclass(frozen=True)
class MetricChoice:
    """A metric's value per job: its best (``lowest`` or highest) or its last (the latest
    attempt's highest step)."""

    name: str
    last: bool = False
    lowest: bool = False  # the best is the lowest (a loss)


@dataclass(frozen=True)
class JobFilter:
    """Which of a tenant's jobs, in which order, which page (``offset``, ``limit``)."""

    states: tuple[JobState, ...] = ()
    model: str | None = None
    dataset: str | None = None
    dataset_version: int | None = None
    study: str | None = None
    metric: MetricChoice | None = None
    sort: Sort = "created"
    descending: bool = True
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class ListedJob:
    """A row of the jobs list."""

    id: str
    state: JobState
    model: str
    dataset: str | None
    dataset_version: int | None
    params: dict[str, Any]
    progress: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    study: str | None
    trial: int | None
    metric: float | None


def _metric_value(choice: MetricChoice) -> Any:
    """The job's value of one metric, as a sub-query on the job's own rows: a seek on
    ix_job_metrics_job_name, then at most that job's points of that metric."""
    rows = JobMetricRow
    mine = (rows.job_id == JobRow.id, rows.name == choice.name)
    if choice.last:
        query = (
            select(rows.value)
            .where(*mine)
            .order_by(rows.attempt_number.desc(), rows.step.desc())
            .limit(1)
        )
    else:
        best = func.min(rows.value) if choice.lowest else func.max(rows.value)
        query = select(best).where(*mine)
    return query.correlate(JobRow).scalar_subquery()


def _where(tenant_id: int, wanted: JobFilter) -> list[ColumnElement[bool]]:
    where = [JobRow.tenant_id == tenant_id]
    if wanted.states:
        where.append(JobRow.state.in_([s.value for s in wanted.states]))
    if wanted.model is not None:
        where.append(JobRow.model == wanted.model)
    if wanted.dataset is not None:
        where.append(JobRow.dataset_name == wanted.dataset)
        if wanted.dataset_version is not None:
            where.append(JobRow.dataset_version == wanted.dataset_version)
    if wanted.study is not None:
        trials = select(StudyTrialRow.job_id).where(StudyTrialRow.study_id == wanted.study)
        where.append(JobRow.id.in_(trials))
    return where


def list_query(tenant_id: int, wanted: JobFilter) -> Select[Any]:
    """The page's keys in order: ``(id, metric)`` of at most ``limit`` jobs. Only the
    index's columns and the metric travel through the sort; the rows' details are read
    for the page's ids alone (:func:`list_sorted`). Tests read its query plan."""
    by_metric = wanted.sort == "metric" and wanted.metric is not None
    value = _metric_value(wanted.metric) if by_metric and wanted.metric is not None else None
    query = select(JobRow.id, (value if value is not None else null()).label("metric")).where(
        *_where(tenant_id, wanted)
    )
    created = JobRow.created_at.desc() if wanted.descending else JobRow.created_at.asc()
    ident = JobRow.id.desc() if wanted.descending else JobRow.id.asc()
    if value is not None:
        # By the result column's name: the sub-query runs once per job, not once per use.
        metric: ColumnElement[Any] = literal_column("metric")
        sorted_value = metric.desc() if wanted.descending else metric.asc()
        order = [sorted_value.nulls_last(), JobRow.created_at.desc(), JobRow.id.desc()]
    elif wanted.sort == "state":
        state = JobRow.state.desc() if wanted.descending else JobRow.state.asc()
        order = [state, JobRow.created_at.desc(), JobRow.id.desc()]
    else:
        order = [created, ident]
    return query.order_by(*order).offset(wanted.offset).limit(wanted.limit)


def list_sorted(session: Session, tenant_id: int, wanted: JobFilter) -> list[ListedJob]:
    """One page of the tenant's jobs: filtered, sorted and paged by the database."""
    keys = session.execute(list_query(tenant_id, wanted)).tuples().all()
    if not keys:
        return []
    details = select(
        JobRow.id,
        JobRow.state,
        JobRow.model,
        JobRow.dataset_name,
        JobRow.dataset_version,
        JobRow.spec,
        JobRow.progress,
        JobRow.created_at,
        JobRow.started_at,
        JobRow.finished_at,
        StudyTrialRow.study_id,
        StudyTrialRow.number,
        # Not sorted by it, the metric is read for the page's jobs alone.
        (_metric_value(wanted.metric) if wanted.metric is not None else null()).label("metric"),
    ).outerjoin(StudyTrialRow, StudyTrialRow.job_id == JobRow.id)
    rows = {
        row.id: row for row in session.execute(details.where(JobRow.id.in_([k for k, _ in keys])))
    }
    return [
        ListedJob(
            id=row.id,
            state=JobState(row.state),
            model=row.model or str(row.spec.get("model", "")),
            dataset=row.dataset_name,
            dataset_version=row.dataset_version,
            params=dict(row.spec.get("params") or {}),
            progress=row.progress,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            study=row.study_id,
            trial=row.number,
            metric=metric if metric is not None else row.metric,
        )
        for job_id, metric in keys
        if (row := rows.get(job_id)) is not None
    ]


def count(session: Session, tenant_id: int, wanted: JobFilter) -> int:
    """How many of the tenant's jobs the filter keeps (an index range count)."""
    query = select(func.count()).select_from(JobRow).where(*_where(tenant_id, wanted))
    return int(session.scalar(query) or 0)


def metric_names(session: Session, tenant_id: int, recent: int = 200) -> list[str]:
    """The names of the metrics the tenant's ``recent`` newest jobs reported."""
    jobs = (
        select(JobRow.id)
        .where(JobRow.tenant_id == tenant_id)
        .order_by(JobRow.created_at.desc())
        .limit(recent)
    )
    query = (
        select(distinct(JobMetricRow.name))
        .where(JobMetricRow.job_id.in_(jobs.scalar_subquery()))
        .order_by(JobMetricRow.name)
    )
    return list(session.scalars(query))
