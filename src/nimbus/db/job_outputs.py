"""What a job's process writes while its attempt runs: log chunks, metrics, checkpoints,
artifacts, progress and the result; and their reads.

Like :mod:`nimbus.db.jobs` (the queue), every function takes a
:class:`~sqlalchemy.orm.Session` and every time is passed in. Writes are fenced: they are
refused with :class:`~nimbus.jobs.domain.Fenced` unless the attempt is still *running*,
except log chunks, which only need the attempt to be the job's latest, so the tail of a
killed process's output still lands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from nimbus.db.tables import (
    JobArtifactRow,
    JobAttemptRow,
    JobCheckpointRow,
    JobLogRow,
    JobMetricRow,
    JobRow,
)
from nimbus.errors import NotFound
from nimbus.jobs.domain import AttemptState, Fenced


def _running(session: Session, attempt_id: str) -> tuple[str, int]:
    """(job id, attempt number) of a running attempt, else :class:`Fenced`.

    Holds a share lock on the attempt until commit, so it cannot end under the write.
    """
    found = session.execute(
        select(JobAttemptRow.job_id, JobAttemptRow.number)
        .where(JobAttemptRow.id == attempt_id, JobAttemptRow.state == AttemptState.RUNNING.value)
        .with_for_update(read=True)
    ).first()
    if found is None:
        raise Fenced(f"attempt {attempt_id} is not running", attempt_id=attempt_id)
    return found[0], found[1]


@dataclass(frozen=True)
class LogChunk:
    seq: int
    attempt_number: int
    data: str
    created_at: datetime


def append_logs(session: Session, attempt_id: str, chunks: Sequence[str], now: datetime) -> int:
    """Append output chunks; returns the last seq. Fenced unless the attempt is the job's
    latest. Sequence numbers are handed out under the job row's lock, so a reader polling
    with ``after_seq`` never skips a chunk that commits late."""
    attempt = session.get(JobAttemptRow, attempt_id)
    if attempt is None:
        raise Fenced(f"no attempt {attempt_id}", attempt_id=attempt_id)
    last = session.execute(
        update(JobRow)
        .where(JobRow.id == attempt.job_id, JobRow.current_attempt_id == attempt_id)
        .values(log_seq=JobRow.log_seq + len(chunks))
        .returning(JobRow.log_seq)
    ).scalar()
    if last is None:
        raise Fenced(f"attempt {attempt_id} was replaced", attempt_id=attempt_id)
    first = last - len(chunks) + 1
    session.add_all(
        JobLogRow(
            job_id=attempt.job_id,
            attempt_number=attempt.number,
            seq=first + i,
            data=data,
            created_at=now,
        )
        for i, data in enumerate(chunks)
    )
    session.flush()
    return int(last)


def read_logs(
    session: Session, job_id: str, after_seq: int = 0, limit: int = 1000
) -> list[LogChunk]:
    """Chunks with ``seq > after_seq``, in order (poll with the last seq seen)."""
    query = (
        select(JobLogRow)
        .where(JobLogRow.job_id == job_id, JobLogRow.seq > after_seq)
        .order_by(JobLogRow.seq)
        .limit(limit)
    )
    return [LogChunk(r.seq, r.attempt_number, r.data, r.created_at) for r in session.scalars(query)]


@dataclass(frozen=True)
class Metric:
    attempt_number: int
    step: int
    name: str
    value: float
    created_at: datetime


def add_metrics(
    session: Session, attempt_id: str, metrics: Sequence[tuple[int, str, float]], now: datetime
) -> None:
    """Record ``(step, name, value)`` triples for a running attempt (fenced)."""
    job_id, number = _running(session, attempt_id)
    session.add_all(
        JobMetricRow(
            job_id=job_id,
            attempt_number=number,
            step=step,
            name=name,
            value=float(value),
            created_at=now,
        )
        for step, name, value in metrics
    )
    session.flush()


def read_metrics(session: Session, job_id: str, name: str | None = None) -> list[Metric]:
    query = select(JobMetricRow).where(JobMetricRow.job_id == job_id)
    if name is not None:
        query = query.where(JobMetricRow.name == name)
    query = query.order_by(JobMetricRow.attempt_number, JobMetricRow.step, JobMetricRow.id)
    return [
        Metric(r.attempt_number, r.step, r.name, r.value, r.created_at)
        for r in session.scalars(query)
    ]


@dataclass(frozen=True)
class Checkpoint:
    id: int
    attempt_number: int
    epoch: int | None
    step: int
    blob_key: str
    complete: bool
    created_at: datetime


def record_checkpoint(
    session: Session,
    attempt_id: str,
    *,
    step: int,
    blob_key: str,
    now: datetime,
    epoch: int | None = None,
    complete: bool = True,
) -> int:
    """Record a checkpoint of a running attempt (fenced); returns its id."""
    job_id, number = _running(session, attempt_id)
    row = JobCheckpointRow(
        job_id=job_id,
        attempt_number=number,
        epoch=epoch,
        step=step,
        blob_key=blob_key,
        complete=complete,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row.id


def complete_checkpoint(session: Session, attempt_id: str, checkpoint_id: int) -> None:
    """Mark a checkpoint written by this (still running) attempt complete (fenced)."""
    job_id, number = _running(session, attempt_id)
    done = session.execute(
        update(JobCheckpointRow)
        .where(
            JobCheckpointRow.id == checkpoint_id,
            JobCheckpointRow.job_id == job_id,
            JobCheckpointRow.attempt_number == number,
        )
        .values(complete=True)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise NotFound(f"no checkpoint {checkpoint_id} of attempt {attempt_id}")


def latest_checkpoint(session: Session, job_id: str) -> Checkpoint | None:
    """The job's most advanced complete checkpoint, to resume from."""
    row = session.scalars(
        select(JobCheckpointRow)
        .where(JobCheckpointRow.job_id == job_id, JobCheckpointRow.complete.is_(True))
        .order_by(JobCheckpointRow.step.desc(), JobCheckpointRow.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    return Checkpoint(
        row.id, row.attempt_number, row.epoch, row.step, row.blob_key, row.complete, row.created_at
    )


def prune_checkpoints(session: Session, job_id: str, keep: int) -> list[int]:
    """Delete all but the ``keep`` most advanced complete checkpoints of a job (and any
    incomplete ones older than those); returns the ids deleted, whose blob references the
    caller releases."""
    rows = (
        session.execute(
            select(JobCheckpointRow.id, JobCheckpointRow.complete)
            .where(JobCheckpointRow.job_id == job_id)
            .order_by(JobCheckpointRow.step.desc(), JobCheckpointRow.id.desc())
        )
        .tuples()
        .all()
    )
    kept, doomed = 0, []
    for checkpoint_id, complete in rows:
        if complete and kept < keep:
            kept += 1
        elif kept >= keep:
            doomed.append(checkpoint_id)
    if doomed:
        session.execute(delete(JobCheckpointRow).where(JobCheckpointRow.id.in_(doomed)))
    return doomed


def set_progress(session: Session, attempt_id: str, progress: dict[str, Any]) -> None:
    """Store the latest progress a running attempt reported (fenced)."""
    job_id, _ = _running(session, attempt_id)
    session.execute(update(JobRow).where(JobRow.id == job_id).values(progress=progress))


def add_artifact(
    session: Session, attempt_id: str, name: str, blob_key: str, size: int, now: datetime
) -> tuple[int, list[int]]:
    """Record an output file of a running attempt (fenced); a later attempt's file of the same
    name replaces an earlier one's. Returns the new row's id and the ids of rows replaced."""
    job_id, number = _running(session, attempt_id)
    old = list(
        session.scalars(
            select(JobArtifactRow.id).where(
                JobArtifactRow.job_id == job_id, JobArtifactRow.name == name
            )
        )
    )
    if old:
        session.execute(delete(JobArtifactRow).where(JobArtifactRow.id.in_(old)))
    row = JobArtifactRow(
        job_id=job_id,
        attempt_number=number,
        name=name,
        blob_key=blob_key,
        size=size,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row.id, old


def list_artifacts(session: Session, job_id: str) -> list[dict[str, Any]]:
    query = select(JobArtifactRow).where(JobArtifactRow.job_id == job_id)
    return [
        {
            "name": r.name,
            "blob_key": r.blob_key,
            "size": r.size,
            "attempt_number": r.attempt_number,
            "created_at": r.created_at,
        }
        for r in session.scalars(query.order_by(JobArtifactRow.name))
    ]


def set_result(session: Session, attempt_id: str, result: dict[str, Any]) -> None:
    """Store the job's result (its evaluation) from its running attempt (fenced)."""
    job_id, _ = _running(session, attempt_id)
    session.execute(update(JobRow).where(JobRow.id == job_id).values(result=result))
