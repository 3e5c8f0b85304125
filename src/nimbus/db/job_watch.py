"""Reads for someone watching a job in the console: the end of its log, and its metric
points after the last one seen (by row id), so a page that stays open reads each point once.

A job's metric rows are written by one sender at a time (rank 0 of the job's current
attempt; an older attempt is fenced), one post after the other, so their ids grow in the
order they commit: polling ``id > last seen`` misses none.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from nimbus.db.job_outputs import LogChunk
from nimbus.db.tables import JobLogRow, JobMetricRow


@dataclass(frozen=True)
class MetricPoint:
    id: int
    attempt_number: int
    step: int
    name: str
    value: float


def metrics_after(session: Session, job_id: str, after_id: int, limit: int) -> list[MetricPoint]:
    """The job's metric points with ``id > after_id``, oldest first, at most ``limit``."""
    query = (
        select(
            JobMetricRow.id,
            JobMetricRow.attempt_number,
            JobMetricRow.step,
            JobMetricRow.name,
            JobMetricRow.value,
        )
        .where(JobMetricRow.job_id == job_id, JobMetricRow.id > after_id)
        .order_by(JobMetricRow.id)
        .limit(limit)
    )
    return [MetricPoint(*row) for row in session.execute(query).tuples()]


def log_tail(session: Session, job_id: str, count: int) -> list[LogChunk]:
    """The job's last ``count`` log chunks, in order."""
    query = (
        select(JobLogRow)
        .where(JobLogRow.job_id == job_id)
        .order_by(JobLogRow.seq.desc())
        .limit(count)
    )
    rows = list(session.scalars(query))
    return [LogChunk(r.seq, r.attempt_number, r.data, r.created_at) for r in reversed(rows)]
