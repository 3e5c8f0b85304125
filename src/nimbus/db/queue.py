"""The job queue the scheduler runs on: :class:`nimbus.jobs.queue.JobQueue` over the
metadata store, one transaction per call (the functions of :mod:`nimbus.db.jobs`).

A queue opened with a ``fence`` (the leader's, :mod:`nimbus.db.control_planes`) checks it
first in every write's transaction: once another control plane leads, each write raises
:class:`~nimbus.jobs.domain.Deposed` and changes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from nimbus.db import control_planes, job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.tables import JobRow
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Attempt, Claim, Fence, Lease
from nimbus.jobs.policy import Decision, Outcome, RetryPolicy
from nimbus.jobs.queue import Expired


class DbQueue:
    """The queue in the metadata store ``db`` (SQLite or PostgreSQL), shared by every
    scheduler that opens it; its writes fenced by ``fence`` when given."""

    def __init__(self, db: Database, fence: Fence | None = None) -> None:
        self.db = db
        self.fence = fence

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self.db.session(write=True) as s:
            if self.fence is not None:
                control_planes.check_fence(s, self.fence)
            yield s

    def expire(self, now: datetime, policy: RetryPolicy) -> Expired:
        with self._write() as s:
            requeued = [job_id for job_id, _ in repo.requeue_expired(s, now, policy)]
            return Expired(requeued, repo.expire_deadlines(s, now))

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
        with self._write() as s:
            return repo.claim_next(
                s,
                capacity=capacity,
                owner=owner,
                now=now,
                lease_seconds=lease_seconds,
                tenant_limit=tenant_limit,
                limit=limit,
                reserve_after=reserve_after,
            )

    def heartbeat(
        self, attempt_ids: Sequence[str], owner: str, now: datetime, lease_seconds: float
    ) -> dict[str, Lease | None]:
        with self._write() as s:
            return repo.heartbeat_many(s, attempt_ids, owner, now, lease_seconds)

    def running_status(self, attempt_ids: Sequence[str]) -> dict[str, bool | None]:
        with self.db.session() as s:
            return repo.running_status(s, attempt_ids)

    def finish(
        self, attempt_id: str, outcome: Outcome, now: datetime, policy: RetryPolicy
    ) -> Decision:
        with self._write() as s:
            return repo.finish_attempt(s, attempt_id, outcome, now, policy)

    def abandon_owned(
        self, owner: str, now: datetime, keep: Iterable[str], policy: RetryPolicy
    ) -> list[str]:
        with self._write() as s:
            return [job_id for job_id, _ in repo.abandon_owned(s, owner, now, keep, policy)]

    def get_attempt(self, attempt_id: str) -> Attempt | None:
        with self.db.session() as s:
            return repo.get_attempt(s, attempt_id)

    def record_worker(self, attempt_id: str, rank: int, node: str, address: str) -> None:
        with self.db.session(write=True) as s:
            repo.record_worker(s, attempt_id, rank, node, address)

    def record_lock(self, job_id: str, lock: tuple[str, ...]) -> None:
        with self._write() as s:
            row = s.get(JobRow, job_id)
            if row is not None:
                row.environment_lock = list(lock)

    def append_logs(self, attempt_id: str, chunks: Sequence[str], now: datetime) -> None:
        with self._write() as s:
            job_outputs.append_logs(s, attempt_id, chunks, now)
