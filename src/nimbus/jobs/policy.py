"""Pure scheduling decisions: which jobs start next and what an attempt's end means.

Nothing here does I/O or reads a clock: every function takes ``now``. The queue in the
metadata store (:mod:`nimbus.db.jobs`) runs these decisions inside its transactions, and the
scheduler loop (:mod:`nimbus.jobs.scheduler`) applies them through its
:class:`~nimbus.jobs.queue.JobQueue`.

Ordering and head-of-line blocking
----------------------------------
:func:`pick` walks the eligible jobs by priority (higher first), then FIFO, and starts every
job that fits next to what already runs (*backfilling*). A big job that does not fit right
now therefore does not stop smaller ones behind it. The price is possible starvation: a
steady stream of small jobs can keep a big job waiting forever. ``reserve_after`` bounds
that: once a job that fits the node but not the current free resources has waited that long,
nothing behind it starts, so the node drains until the big job fits. The cost of reserving
is idle resources while the node drains; ``None`` (the default) never reserves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from signal import Signals
from typing import Protocol

from nimbus.jobs.capacity import Capacity, Usage
from nimbus.jobs.domain import (
    USER_ERROR_EXIT_CODE,
    AttemptState,
    ExitReason,
    JobState,
    Resources,
)
from nimbus.jobs.queue_index import QueuedJob as QueuedJob  # re-exported: the queue uses it
from nimbus.jobs.queue_index import QueueIndex
from nimbus.jobs.queue_index import TenantLimit as TenantLimit  # re-exported, as QueuedJob
from nimbus.jobs.queue_index import limit_of as limit_of


@dataclass(frozen=True)
class RunningJob:
    """A running job; ``local`` when it runs on the node being scheduled (uses its capacity).

    Jobs on other nodes still count against their tenant's limit.
    """

    id: str
    tenant_id: int
    resources: Resources
    local: bool = True


def pick(
    queued: Sequence[QueuedJob],
    running: Sequence[RunningJob],
    capacity: Capacity,
    tenant_limit: TenantLimit,
    now: datetime,
    *,
    reserve_after: timedelta | None = None,
) -> list[str]:
    """The ids of the jobs to start now, in start order.

    Skips jobs whose ``not_before`` is in the future, jobs of tenants already running
    ``tenant_limit`` jobs (one limit for all, or one per tenant), and jobs that do not fit the
    free resources (see the module docstring for the starvation trade-off and
    ``reserve_after``). The walk is done by :class:`~.queue_index.QueueIndex`, which the
    scheduler simulation (``bench/schedule_sim.py``) also drives incrementally.
    """
    used = Usage()
    for run in running:
        if run.local:
            used = used.plus(run.resources)
    per_tenant = Counter(run.tenant_id for run in running)
    return pick_next_to(
        queued, used, per_tenant, capacity, tenant_limit, now, reserve_after=reserve_after
    )


def pick_next_to(
    queued: Sequence[QueuedJob],
    used: Usage,
    running_per_tenant: Mapping[int, int],
    capacity: Capacity,
    tenant_limit: TenantLimit,
    now: datetime,
    *,
    reserve_after: timedelta | None = None,
) -> list[str]:
    """:func:`pick`, given what the node already uses and how many jobs each tenant runs on
    all nodes (instead of the running jobs themselves)."""
    index = QueueIndex(reserve_after)
    for job in queued:
        index.add(job)
    return index.take(capacity, used, running_per_tenant, tenant_limit, now)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts: ``base * factor**(n-1)``, at most ``cap``."""

    base_seconds: float = 10.0
    factor: float = 2.0
    cap_seconds: float = 600.0


def backoff(attempt_number: int, policy: RetryPolicy = RetryPolicy()) -> timedelta:
    """How long to wait after attempt ``attempt_number`` (1-based) failed before the next."""
    exponent = max(attempt_number - 1, 0)
    seconds = min(policy.base_seconds * policy.factor ** min(exponent, 64), policy.cap_seconds)
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as seen by the executor or the lease keeper."""

    reason: ExitReason
    exit_code: int | None = None
    signal: int | None = None
    detail: str = ""

    @classmethod
    def from_exit(cls, exit_code: int | None, signal: int | None = None) -> Outcome:
        """Classify a process end: 0 succeeded, 3 user error, other codes and signals not."""
        if signal is not None:
            return cls(ExitReason.SIGNALED, signal=signal, detail=f"killed by {_signame(signal)}")
        if exit_code == 0:
            return cls(ExitReason.SUCCEEDED, exit_code=0)
        if exit_code == USER_ERROR_EXIT_CODE:
            return cls(ExitReason.USER_ERROR, exit_code=exit_code, detail="the job's code raised")
        return cls(ExitReason.EXIT_ERROR, exit_code=exit_code, detail=f"exited with {exit_code}")

    @classmethod
    def lost(cls) -> Outcome:
        return cls(ExitReason.LOST, detail="lease expired (heartbeat lost)")

    @classmethod
    def infra(cls, detail: str) -> Outcome:
        return cls(ExitReason.INFRA, detail=detail)


def _signame(number: int) -> str:
    try:
        return f"signal {number} ({Signals(number).name})"
    except ValueError:
        return f"signal {number}"


class RetryFacts(Protocol):
    """What :func:`on_attempt_end` needs of a job (a stored :class:`~.domain.Job` has it)."""

    @property
    def attempts(self) -> int: ...  # attempts started, the one ending included
    @property
    def max_retries(self) -> int: ...
    @property
    def deadline_at(self) -> datetime | None: ...
    @property
    def cancel_requested(self) -> bool: ...


@dataclass(frozen=True)
class Decision:
    """What becomes of a job when its current attempt ends.

    ``job_state`` QUEUED means requeued, to start no earlier than ``not_before``.
    """

    job_state: JobState
    attempt_state: AttemptState
    reason: ExitReason
    message: str
    not_before: datetime | None = None


def deadline_passed(deadline_at: datetime | None, now: datetime) -> bool:
    return deadline_at is not None and now >= deadline_at


def lease_expired(lease_expires_at: datetime | None, now: datetime) -> bool:
    """A running attempt whose lease has run out belongs to nobody any more."""
    return lease_expires_at is not None and now >= lease_expires_at


# The same job would hit the same limit again: a retry would only repeat the failure.
_NOT_RETRIED = (
    ExitReason.USER_ERROR,
    ExitReason.OUT_OF_MEMORY,
    ExitReason.DISK_LIMIT,
    ExitReason.ENVIRONMENT_BUILD_FAILED,
)


def on_attempt_end(
    job: RetryFacts, outcome: Outcome, now: datetime, policy: RetryPolicy = RetryPolicy()
) -> Decision:
    """Decide the job's fate when its current attempt ends.

    Precedence: success (the work is done, even if a cancel raced it), then cancel, then the
    deadline (it beats remaining retries), then user errors (never retried), then retries
    with backoff while ``attempts <= max_retries``, else failure.
    """
    attempt_failed = AttemptState.LOST if outcome.reason is ExitReason.LOST else AttemptState.FAILED
    if outcome.reason is ExitReason.SUCCEEDED:
        return Decision(JobState.SUCCEEDED, AttemptState.SUCCEEDED, outcome.reason, "succeeded")
    if job.cancel_requested:
        return Decision(
            JobState.CANCELLED, AttemptState.CANCELLED, ExitReason.CANCELLED, "cancelled"
        )
    if deadline_passed(job.deadline_at, now):
        return Decision(
            JobState.FAILED,
            attempt_failed,
            ExitReason.DEADLINE,
            f"deadline exceeded (last attempt: {outcome.detail or outcome.reason})",
        )
    if outcome.reason in _NOT_RETRIED:
        return Decision(
            JobState.FAILED, AttemptState.FAILED, outcome.reason, f"{outcome.detail}: not retried"
        )
    if job.attempts <= job.max_retries:
        not_before = now + backoff(job.attempts, policy)
        if deadline_passed(job.deadline_at, not_before):
            return Decision(
                JobState.FAILED,
                attempt_failed,
                ExitReason.DEADLINE,
                f"deadline exceeded before a retry could start ({outcome.detail})",
            )
        return Decision(
            JobState.QUEUED,
            attempt_failed,
            outcome.reason,
            f"attempt {job.attempts} {outcome.detail}; retrying",
            not_before,
        )
    tries = "1 attempt" if job.attempts == 1 else f"{job.attempts} attempts"
    return Decision(
        JobState.FAILED,
        attempt_failed,
        outcome.reason,
        f"{outcome.detail or outcome.reason} after {tries} (retries exhausted)",
    )


def deadline_decision(outcome_detail: str = "") -> Decision:
    """The decision for a job (queued or running) whose deadline has passed."""
    extra = f" ({outcome_detail})" if outcome_detail else ""
    return Decision(
        JobState.FAILED, AttemptState.FAILED, ExitReason.DEADLINE, f"deadline exceeded{extra}"
    )


def cancel_decision() -> Decision:
    """The decision for a queued job that is cancelled (it ends at once)."""
    return Decision(JobState.CANCELLED, AttemptState.CANCELLED, ExitReason.CANCELLED, "cancelled")
