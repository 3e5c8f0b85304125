"""Job queue repository: submit, read, claim, lease, finish, cancel.

Every function takes a :class:`~sqlalchemy.orm.Session` and every time is passed in
(``now``). State transitions read-then-write, so call them inside
``db.session(write=True)``: on SQLite that is ``BEGIN IMMEDIATE`` (one writer at a time);
on PostgreSQL they lock the rows they change (``SELECT ... FOR UPDATE``, ``SKIP LOCKED``
where another scheduler may be busy with a row).

Fencing: heartbeats and ends name an attempt, and are refused with
:class:`~nimbus.jobs.domain.Fenced` unless that attempt is still *running* (an attempt leaves
that state exactly when the job moves on: finished, requeued after a lost lease, failed by its
deadline). What a job process writes (logs, metrics, checkpoints, artifacts) is in
:mod:`nimbus.db.job_outputs`, fenced the same way. The scheduler reaches these functions
through :class:`nimbus.db.queue.DbQueue`.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from nimbus.db.queue_read import QueueRead
from nimbus.db.tables import JobAttemptRow, JobRow
from nimbus.errors import NotFound
from nimbus.jobs.capacity import Capacity, Usage, check_request
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
    TenantLimit,
    cancel_decision,
    deadline_decision,
    limit_of,
    on_attempt_end,
    pick_next_to,
)
from nimbus.jobs.tokens import mint_token
from nimbus.security import hash_token

_TENANT_LOCK_CLASS = 0x4E4A4F42  # "NJOB": advisory locks serialising claims per tenant (PG)
# The tenants' locks in one round trip, taken in the order of the array (sorted).
_LOCK_TENANTS = text(
    "SELECT pg_advisory_xact_lock(:kind, tenant) FROM unnest(CAST(:ids AS integer[])) AS tenant"
)


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
        environment_lock=tuple(row.environment_lock or ()),
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
    dataset_name, sep, version = (spec.dataset or "").rpartition(":")
    dataset_version = int(version) if sep and version.isdigit() else None
    if dataset_version is None:
        dataset_name = spec.dataset or ""
    row = JobRow(
        id=new_job_id(),
        tenant_id=tenant_id,
        spec=spec.to_dict(),
        model=spec.model,
        dataset_name=dataset_name or None,
        dataset_version=dataset_version,
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


def count_active(session: Session, tenant_id: int) -> int:
    """How many of the tenant's jobs are queued or running (what its jobs quota counts)."""
    active = [JobState.QUEUED.value, JobState.RUNNING.value]
    query = select(func.count()).where(JobRow.tenant_id == tenant_id, JobRow.state.in_(active))
    return int(session.scalar(query) or 0)


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
    tenant_limit: TenantLimit = None,
    limit: int | None = None,
    reserve_after: timedelta | None = None,
    new_token: Callable[[], str] = mint_token,
) -> list[Claim]:
    """Start what :func:`~nimbus.jobs.policy.pick` chooses over the whole queue, on the
    node ``owner``.

    Creates one attempt per chosen job, leased to ``owner`` until ``now + lease_seconds``.
    On SQLite run it in a ``write=True`` session (one writer at a time). The queue is read
    by :class:`~nimbus.db.queue_read.QueueRead`: a few index seeks per group of jobs with
    the same tenant and resources, not a scan of the queue. On PostgreSQL it is read without
    locks, and only the chosen rows are then locked ``FOR UPDATE SKIP LOCKED`` and
    re-checked: a job another scheduler took in between is dropped (dropping a job only
    frees room, so the rest still fit), and schedulers contend on the rows they pick, not the
    whole queue. With a tenant limit, claims are serialised per tenant (advisory locks, taken
    before counting running jobs) so the limit holds across schedulers.
    """
    queue = QueueRead(session, now)
    if not queue.groups:
        return []
    if _is_postgres(session) and tenant_limit is not None:
        session.execute(_LOCK_TENANTS, {"kind": _TENANT_LOCK_CLASS, "ids": sorted(queue.tenants())})
    used, per_tenant = _running(session, owner, count_tenants=tenant_limit is not None)

    def decide(queued: list[QueuedJob]) -> list[str]:
        return pick_next_to(
            queued, used, per_tenant, capacity, tenant_limit, now, reserve_after=reserve_after
        )

    def may_reserve(job: QueuedJob) -> bool:
        room = limit_of(tenant_limit, job.tenant_id)
        return capacity.fits(job.resources) and (room is None or per_tenant[job.tenant_id] < room)

    chosen = queue.settle(decide, reserve_after, may_reserve)[:limit]
    if not chosen:
        return []
    locked = session.scalars(
        select(JobRow)
        .where(JobRow.id.in_(chosen))  # by key alone: SQLite might scan the queue's index
        .with_for_update(skip_locked=True, key_share=True)
        .execution_options(populate_existing=True)
    )
    rows = {
        row.id: row
        for row in locked
        if row.state == JobState.QUEUED.value and not row.cancel_requested
    }
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


def _running(session: Session, owner: str, *, count_tenants: bool) -> tuple[Usage, Counter[int]]:
    """What the jobs running on ``owner`` use, and (if asked) how many jobs each tenant
    runs on all nodes."""
    used = Usage()
    local = (
        select(JobRow.cpus, JobRow.gpus, JobRow.memory_bytes, JobRow.workers)
        .join(JobAttemptRow, JobAttemptRow.id == JobRow.current_attempt_id)
        .where(JobRow.state == JobState.RUNNING.value, JobAttemptRow.lease_owner == owner)
    )
    for cpus, gpus, memory, workers in session.execute(local).tuples():
        used = used.plus(Resources(cpus=cpus, gpus=gpus, memory_bytes=memory, workers=workers))
    per_tenant: Counter[int] = Counter()
    if count_tenants:
        counts = (
            select(JobRow.tenant_id, func.count())
            .where(JobRow.state == JobState.RUNNING.value)
            .group_by(JobRow.tenant_id)
        )
        per_tenant.update(dict(session.execute(counts).tuples().all()))
    return used, per_tenant


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


def record_worker(session: Session, attempt_id: str, rank: int, node: str, address: str) -> None:
    """Where worker ``rank`` of an attempt runs (kept with the attempt, shown by jobs show)."""
    row = session.get(JobAttemptRow, attempt_id)
    if row is None:
        return
    placed = [w for w in json.loads(row.workers or "[]") if w.get("rank") != rank]
    placed.append({"rank": rank, "node": node, "address": address})
    row.workers = json.dumps(sorted(placed, key=lambda w: w["rank"]))
