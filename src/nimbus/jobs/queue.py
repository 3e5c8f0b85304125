"""The job queue as the scheduler sees it: one small interface, implemented by the metadata
store (:class:`nimbus.db.queue.DbQueue`) and handed to :class:`~.scheduler.Scheduler`.

Every call is one transaction, and every time is passed in. Attempts are fenced: a call
about an attempt that is no longer its job's running attempt (finished, requeued after a
lost lease, failed by its deadline) raises :class:`~.domain.Fenced` or answers None, as
each method says, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Attempt, Claim, Lease
from nimbus.jobs.policy import Decision, Outcome, RetryPolicy


@dataclass(frozen=True)
class Expired:
    """What :meth:`JobQueue.expire` ended: job ids."""

    requeued: list[str] = field(default_factory=list)  # lease ran out: requeued (or failed)
    deadline_failed: list[str] = field(default_factory=list)


class JobQueue(Protocol):
    """The queued and running jobs, shared by every scheduler of the control plane."""

    def expire(self, now: datetime, policy: RetryPolicy) -> Expired:
        """End the attempts whose lease ran out (their jobs are requeued with backoff, or
        fail), and fail every job past its deadline."""
        ...

    def claim(
        self,
        *,
        capacity: Capacity,
        owner: str,
        now: datetime,
        lease_seconds: float,
        tenant_limit: int | None = None,
        limit: int | None = None,
        reserve_after: timedelta | None = None,
    ) -> list[Claim]:
        """Start what the policy picks for a node of ``capacity``: one new attempt per
        chosen job, leased to ``owner`` until ``now + lease_seconds``."""
        ...

    def heartbeat(
        self, attempt_ids: Sequence[str], owner: str, now: datetime, lease_seconds: float
    ) -> dict[str, Lease | None]:
        """Extend the leases of ``owner``'s attempts; None for an attempt that was fenced."""
        ...

    def running_status(self, attempt_ids: Sequence[str]) -> dict[str, bool | None]:
        """Read-only: per attempt, None if it stopped running, else whether its job's
        cancellation was requested."""
        ...

    def finish(
        self, attempt_id: str, outcome: Outcome, now: datetime, policy: RetryPolicy
    ) -> Decision:
        """Record how a running attempt ended and move its job on; :class:`Fenced` if the
        attempt is no longer its job's running one."""
        ...

    def abandon_owned(
        self, owner: str, now: datetime, keep: Iterable[str], policy: RetryPolicy
    ) -> list[str]:
        """At a scheduler's start: end as lost the attempts leased to ``owner`` that it no
        longer runs (all but ``keep``); returns their job ids."""
        ...

    def get_attempt(self, attempt_id: str) -> Attempt | None:
        """One attempt, or None."""
        ...

    def append_logs(self, attempt_id: str, chunks: Sequence[str], now: datetime) -> None:
        """Append an attempt's output; :class:`Fenced` unless it is its job's latest."""
        ...

    def record_worker(self, attempt_id: str, rank: int, node: str, address: str) -> None:
        """Record the node worker ``rank`` of an attempt was placed on."""
        ...

    def record_lock(self, job_id: str, lock: tuple[str, ...]) -> None:
        """Record the pins a job's requirements resolved to (its later attempts use them)."""
        ...
