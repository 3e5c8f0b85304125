"""Job queue repository: submit, claim, lease, finish, cancel, and what job processes write.

Every function takes a :class:`~sqlalchemy.orm.Session` and every time is passed in
(``now``). State transitions read-then-write, so call them inside
``db.session(write=True)``: on SQLite that is ``BEGIN IMMEDIATE`` (one writer at a time);
on PostgreSQL they lock the rows they change (``SELECT ... FOR UPDATE``, ``SKIP LOCKED``
where another scheduler may be busy with a row).

Fencing: a job process's writes name its attempt. Results, metrics, checkpoints, artifacts and
heartbeats are refused with :class:`~nimbus.jobs.domain.Fenced` unless that attempt is still
*running* (an attempt leaves that state exactly when the job moves on: finished, requeued
after a lost lease, failed by its deadline). Log chunks only need the attempt to be the
job's latest, so the tail of a killed process's output still lands.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, or_, select, update
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
from nimbus.jobs.capacity import Capacity, check_request
from nimbus.jobs.domain import (
    Attempt,
    AttemptState,
    Claim,
    ExitReason,
    Fenced,
    Job,
    JobSpec,
    JobState,
    Lease,
    Resources,
)
from nimbus.jobs.policy import (
    Decision,
    Outcome,
    QueuedJob,
    RetryPolicy,
    RunningJob,
    cancel_decision,
    deadline_decision,
    on_attempt_end,
    pick,
)
from nimbus.jobs.tokens import mint_token
from nimbus.security import hash_token

_TENANT_LOCK_CLASS = 0x4E4A4F42  # "NJOB": advisory locks serialising claims per tenant (PG)
CLAIM_CANDIDATES = 200  # queued jobs considered per claim


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


def new_attempt_id() -> str:
    return "att_" + secrets.token_hex(12)


# --- conversions ---------------------------------------------------------------------------


def _job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        tenant_id=row.tenant_id,
        spec=JobSpec.from_dict(row.spec),
        state=JobState(row.state),
        priority=row.priority,
        attempts=row.attempts,
        current_attempt_id=row.current_attempt_id,
        max_retries=row.max_retries,
        deadline_at=row.deadline_at,
        not_before=row.not_before,
        cancel_requested=row.cancel_requested,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        exit_reason=row.exit_reason,
        result=row.result,
        created_by=row.created_by,
    )


def _attempt(row: JobAttemptRow) -> Attempt:
    return Attempt(
        id=row.id,
        job_id=row.job_id,
        number=row.number,
        state=AttemptState(row.state),
        lease_owner=row.lease_owner,
        lease_expires_at=row.lease_expires_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        exit_code=row.exit_code,
        exit_signal=row.exit_signal,
        exit_reason=ExitReason(row.exit_reason) if row.exit_reason else None,
    )


def _resources(row: JobRow) -> Resources:
    return Resources(
        cpus=row.cpus, gpus=row.gpus, memory_bytes=row.memory_bytes, workers=row.workers
    )


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# --- submit and read -----------------------------------------------------------------------


def submit(
    session: Session,
    tenant_id: int,
    spec: JobSpec,
    now: datetime,
    *,
    capacity: Capacity | None = None,
    created_by: str | None = None,
    inputs: dict[str, Any] | None = None,
) -> Job:
    """Queue a job. With ``capacity``, a request no node could ever run is a 400.
    ``inputs`` records what the job reads, as resolved at submit (dataset version, code)."""
    if capacity is not None:
        check_request(spec.resources, capacity)
    res = spec.resources
    row = JobRow(
        id=new_job_id(),
        tenant_id=tenant_id,
        spec=spec.to_dict(),
        state=JobState.QUEUED.value,
        priority=spec.priority,
        cpus=res.cpus,
        gpus=res.gpus,
        memory_bytes=res.memory_bytes,
        workers=res.workers,
        attempts=0,
        current_attempt_id=None,
        max_retries=spec.max_retries,
        deadline_at=(
            now + timedelta(seconds=spec.deadline_seconds) if spec.deadline_seconds else None
        ),
        not_before=None,
        cancel_requested=False,
        log_seq=0,
        created_at=now,
        created_by=created_by,
        inputs=inputs,
    )
    session.add(row)
    session.flush()
    return _job(row)


def get(session: Session, job_id: str, tenant_id: int | None = None) -> Job | None:
    """The job, or None (also when it belongs to another tenant than ``tenant_id``)."""
    row = session.get(JobRow, job_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        return None
    return _job(row)


def list_jobs(
    session: Session,
    tenant_id: int,
    *,
    states: Iterable[JobState] | None = None,
    limit: int = 100,
) -> list[Job]:
    """The tenant's jobs, newest first."""
    query = select(JobRow).where(JobRow.tenant_id == tenant_id)
    if states is not None:
        query = query.where(JobRow.state.in_([s.value for s in states]))
    query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).limit(limit)
    return [_job(row) for row in session.scalars(query)]


def get_attempt(session: Session, attempt_id: str) -> Attempt | None:
    row = session.get(JobAttemptRow, attempt_id)
    return _attempt(row) if row else None


def list_attempts(session: Session, job_id: str) -> list[Attempt]:
    query = select(JobAttemptRow).where(JobAttemptRow.job_id == job_id)
    return [_attempt(r) for r in session.scalars(query.order_by(JobAttemptRow.number))]


def attempt_for_token(session: Session, token_hash: str) -> tuple[Job, Attempt] | None:
    """The job and attempt a job-scoped token belongs to, if that attempt is still running."""
    query = (
        select(JobRow, JobAttemptRow)
        .join(JobAttemptRow, JobAttemptRow.id == JobRow.current_attempt_id)
        .where(
            JobAttemptRow.token_hash == token_hash,
            JobAttemptRow.state == AttemptState.RUNNING.value,
        )
    )
    found = session.execute(query).first()
    return (_job(found[0]), _attempt(found[1])) if found else None


def attempt_by_token(session: Session, token_hash: str) -> tuple[Job, Attempt] | None:
    """The job and attempt a job-scoped token was minted for, whatever their state (so a
    stale attempt can be told apart from an unknown token)."""
    query = (
        select(JobRow, JobAttemptRow)
        .join(JobRow, JobRow.id == JobAttemptRow.job_id)
        .where(JobAttemptRow.token_hash == token_hash)
    )
    found = session.execute(query).first()
    return (_job(found[0]), _attempt(found[1])) if found else None


# --- claiming --------------------------------------------------------------------------------


def claim_next(
    session: Session,
    *,
    capacity: Capacity,
    owner: str,
    now: datetime,
    lease_seconds: float,
    tenant_limit: int | None = None,
    limit: int | None = None,
    reserve_after: timedelta | None = None,
    new_token: Callable[[], str] = mint_token,
) -> list[Claim]:
    """Start what :func:`~nimbus.jobs.policy.pick` chooses, on the node ``owner``.

    Creates one attempt per chosen job, leased to ``owner`` until ``now + lease_seconds``.
    On SQLite run it in a ``write=True`` session (one writer at a time). On PostgreSQL the
    queue is read without locks, and only the chosen rows are then locked
    ``FOR UPDATE SKIP LOCKED`` and re-checked: a job another scheduler took in between is
    dropped (dropping a job only frees room, so the rest still fit), and schedulers contend
    on the rows they pick, not the whole queue. With a tenant limit, claims are serialised
    per tenant (advisory locks, taken before counting running jobs) so the limit holds
    across schedulers.
    """
    candidates = session.execute(
        select(
            JobRow.id,
            JobRow.tenant_id,
            JobRow.priority,
            JobRow.created_at,
            JobRow.cpus,
            JobRow.gpus,
            JobRow.memory_bytes,
            JobRow.workers,
            JobRow.not_before,
        )
        .where(
            JobRow.state == JobState.QUEUED.value,
            JobRow.cancel_requested.is_(False),
            or_(JobRow.not_before.is_(None), JobRow.not_before <= now),
        )
        .order_by(JobRow.priority.desc(), JobRow.created_at, JobRow.id)
        .limit(CLAIM_CANDIDATES)
    ).tuples()
    queued = [
        QueuedJob(
            job_id,
            tenant_id,
            priority,
            created_at,
            Resources(cpus=cpus, gpus=gpus, memory_bytes=mem, workers=workers),
            not_before,
        )
        for job_id, tenant_id, priority, created_at, cpus, gpus, mem, workers, not_before in (
            candidates
        )
    ]
    if not queued:
        return []
    if _is_postgres(session) and tenant_limit is not None:
        for tenant_id in sorted({job.tenant_id for job in queued}):
            session.execute(select(func.pg_advisory_xact_lock(_TENANT_LOCK_CLASS, tenant_id)))
    running = [
        RunningJob(job.id, job.tenant_id, _resources(job), local=lease_owner == owner)
        for job, lease_owner in session.execute(
            select(JobRow, JobAttemptRow.lease_owner)
            .join(JobAttemptRow, JobAttemptRow.id == JobRow.current_attempt_id)
            .where(JobRow.state == JobState.RUNNING.value)
        ).tuples()
    ]
    chosen = pick(queued, running, capacity, tenant_limit, now, reserve_after=reserve_after)[:limit]
    if not chosen:
        return []
    locked = session.scalars(
        select(JobRow)
        .where(
            JobRow.id.in_(chosen),
            JobRow.state == JobState.QUEUED.value,
            JobRow.cancel_requested.is_(False),
        )
        .with_for_update(skip_locked=True, key_share=True)
        .execution_options(populate_existing=True)
    )
    rows = {row.id: row for row in locked}
    claims = []
    for job_id in chosen:
        row = rows.get(job_id)
        if row is None:
            continue  # another scheduler got it first
        token = new_token()
        attempt = JobAttemptRow(
            id=new_attempt_id(),
            job_id=row.id,
            number=row.attempts + 1,
            state=AttemptState.RUNNING.value,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=now,
            token_hash=hash_token(token),
        )
        session.add(attempt)
        row.state, row.attempts = JobState.RUNNING.value, attempt.number
        row.current_attempt_id, row.not_before = attempt.id, None
        row.started_at = row.started_at or now
        session.flush()
        claims.append(Claim(_job(row), _attempt(attempt), token))
    return claims


# --- leases ------------------------------------------------------------------------------------


def heartbeat(
    session: Session,
    attempt_id: str,
    now: datetime,
    lease_seconds: float,
    owner: str | None = None,
) -> Lease:
    """Extend a running attempt's lease; :class:`Fenced` if it is no longer running or its
    lease already ran out (an expired attempt is lost even before anyone requeues it)."""
    conditions = [
        JobAttemptRow.id == attempt_id,
        JobAttemptRow.state == AttemptState.RUNNING.value,
        JobAttemptRow.lease_expires_at > now,
    ]
    if owner is not None:
        conditions.append(JobAttemptRow.lease_owner == owner)
    expires = now + timedelta(seconds=lease_seconds)
    done = session.execute(
        update(JobAttemptRow)
        .where(*conditions)
        .values(lease_expires_at=expires)
        .returning(JobAttemptRow.job_id)
    ).first()
    if done is None:
        raise Fenced(f"attempt {attempt_id} is not running any more", attempt_id=attempt_id)
    cancel = session.scalar(select(JobRow.cancel_requested).where(JobRow.id == done[0]))
    return Lease(attempt_id, expires, bool(cancel))


def heartbeat_many(
    session: Session,
    attempt_ids: Sequence[str],
    owner: str,
    now: datetime,
    lease_seconds: float,
) -> dict[str, Lease | None]:
    """:func:`heartbeat` for every attempt a scheduler runs; None where it was fenced."""
    leases: dict[str, Lease | None] = {}
    for attempt_id in attempt_ids:
        try:
            leases[attempt_id] = heartbeat(session, attempt_id, now, lease_seconds, owner)
        except Fenced:
            leases[attempt_id] = None
    return leases


def running_status(session: Session, attempt_ids: Sequence[str]) -> dict[str, bool | None]:
    """Read-only: per attempt, None if it stopped running, else whether a cancel is pending."""
    status: dict[str, bool | None] = dict.fromkeys(attempt_ids)
    if attempt_ids:
        query = (
            select(JobAttemptRow.id, JobRow.cancel_requested)
            .join(JobRow, JobRow.id == JobAttemptRow.job_id)
            .where(
                JobAttemptRow.id.in_(attempt_ids), JobAttemptRow.state == AttemptState.RUNNING.value
            )
        )
        status.update({aid: bool(cancel) for aid, cancel in session.execute(query)})
    return status


# --- ending attempts ---------------------------------------------------------------------------


def _apply(
    job: JobRow,
    attempt: JobAttemptRow | None,
    decision: Decision,
    outcome: Outcome | None,
    now: datetime,
) -> None:
    if attempt is not None:
        attempt.state, attempt.ended_at = decision.attempt_state.value, now
        if outcome is not None:
            attempt.exit_code, attempt.exit_signal = outcome.exit_code, outcome.signal
            attempt.exit_reason = outcome.reason.value
        else:
            attempt.exit_reason = decision.reason.value
    job.state, job.exit_reason = decision.job_state.value, decision.message
    if decision.job_state is JobState.QUEUED:
        job.not_before = decision.not_before
    else:
        job.finished_at = now


def _lock_job(session: Session, job_id: str) -> JobRow | None:
    # FOR NO KEY UPDATE: does not block inserts of rows referencing the job (KEY SHARE).
    query = select(JobRow).where(JobRow.id == job_id).with_for_update(key_share=True)
    return session.scalars(query.execution_options(populate_existing=True)).first()


def _locked_current(session: Session, attempt_id: str) -> tuple[JobRow, JobAttemptRow]:
    # Lock order everywhere: the job row, then its attempt.
    job_id = session.scalar(select(JobAttemptRow.job_id).where(JobAttemptRow.id == attempt_id))
    job = _lock_job(session, job_id) if job_id else None
    if job is None:
        raise NotFound(f"no attempt {attempt_id}")
    attempt = session.scalars(
        select(JobAttemptRow)
        .where(JobAttemptRow.id == attempt_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if (
        attempt.state != AttemptState.RUNNING.value
        or job.current_attempt_id != attempt.id
        or job.state != JobState.RUNNING.value
    ):
        raise Fenced(
            f"attempt {attempt_id} is not the job's running attempt",
            attempt_id=attempt_id,
            job_id=job.id,
        )
    return job, attempt


def finish_attempt(
    session: Session,
    attempt_id: str,
    outcome: Outcome,
    now: datetime,
    policy: RetryPolicy = RetryPolicy(),
) -> Decision:
    """Record how a running attempt ended and move its job on (fenced)."""
    job, attempt = _locked_current(session, attempt_id)
    decision = on_attempt_end(_job(job), outcome, now, policy)
    _apply(job, attempt, decision, outcome, now)
    session.flush()
    return decision


def _expired_rows(
    session: Session, now: datetime, owner: str | None = None, keep: Iterable[str] = ()
) -> list[tuple[JobRow, JobAttemptRow]]:
    query = (
        select(JobRow, JobAttemptRow)
        .join(JobAttemptRow, JobAttemptRow.id == JobRow.current_attempt_id)
        .where(
            JobRow.state == JobState.RUNNING.value,
            JobAttemptRow.state == AttemptState.RUNNING.value,
        )
    )
    if owner is None:
        query = query.where(JobAttemptRow.lease_expires_at <= now)
    else:
        query = query.where(JobAttemptRow.lease_owner == owner, JobAttemptRow.id.not_in(list(keep)))
    if _is_postgres(session):
        query = query.with_for_update(skip_locked=True, key_share=True)
    query = query.execution_options(populate_existing=True)
    return [(job, attempt) for job, attempt in session.execute(query).tuples()]


def requeue_expired(
    session: Session, now: datetime, policy: RetryPolicy = RetryPolicy()
) -> list[tuple[str, Decision]]:
    """Attempts whose lease ran out are lost: requeue their jobs with backoff, or fail them."""
    decisions = []
    for job, attempt in _expired_rows(session, now):
        decision = on_attempt_end(_job(job), Outcome.lost(), now, policy)
        _apply(job, attempt, decision, Outcome.lost(), now)
        decisions.append((job.id, decision))
    session.flush()
    return decisions


def abandon_owned(
    session: Session,
    owner: str,
    now: datetime,
    keep: Iterable[str] = (),
    policy: RetryPolicy = RetryPolicy(),
) -> list[tuple[str, Decision]]:
    """At a scheduler's start: attempts leased to ``owner`` that it no longer runs (all but
    ``keep``) are lost now, without waiting for their leases to run out."""
    decisions = []
    for job, attempt in _expired_rows(session, now, owner, keep):
        decision = on_attempt_end(_job(job), Outcome.lost(), now, policy)
        _apply(job, attempt, decision, Outcome.lost(), now)
        decisions.append((job.id, decision))
    session.flush()
    return decisions


def expire_deadlines(session: Session, now: datetime) -> list[str]:
    """Fail every queued or running job past its deadline; returns their ids.

    A running attempt is ended here; the scheduler running it finds it fenced and kills it.
    """
    query = select(JobRow).where(
        JobRow.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
        JobRow.deadline_at <= now,
    )
    if _is_postgres(session):
        query = query.with_for_update(skip_locked=True, key_share=True)
    expired = []
    for job in session.scalars(query.execution_options(populate_existing=True)).all():
        attempt = (
            session.get(JobAttemptRow, job.current_attempt_id)
            if job.state == JobState.RUNNING.value and job.current_attempt_id
            else None
        )
        _apply(job, attempt, deadline_decision("the job ran out of time"), None, now)
        expired.append(job.id)
    session.flush()
    return expired


def request_cancel(
    session: Session, job_id: str, now: datetime, tenant_id: int | None = None
) -> Job:
    """Cancel a job: a queued one ends at once, a running one is flagged for its scheduler
    to kill (it ends cancelled when the process is gone). Finished jobs are left alone."""
    job = _lock_job(session, job_id)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise NotFound(f"no job {job_id}")
    if job.state == JobState.QUEUED.value:
        job.cancel_requested = True
        _apply(job, None, cancel_decision(), None, now)
    elif job.state == JobState.RUNNING.value:
        job.cancel_requested = True
    session.flush()
    return _job(job)


# --- what job processes write ---------------------------------------------------------------------


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
