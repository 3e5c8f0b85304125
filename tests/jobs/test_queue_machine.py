"""A state machine over the queue's transitions, checking its invariants after every step.

Runs on SQLite (a fresh copy of a migrated database per example) with an explicit clock.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)
from sqlalchemy import func, select

from nimbus.db import job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.tables import JobAttemptRow, JobMetricRow, JobRow, Tenant
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import AttemptState, Fenced, JobSpec, JobState, Resources
from nimbus.jobs.policy import Outcome, RetryPolicy
from tests.helpers import migrated_sqlite

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NODE = Capacity(cpus=2, gpus=0, memory_bytes=1 << 40)
POLICY = RetryPolicy(base_seconds=2, factor=2, cap_seconds=8)
LEASE = 30
OUTCOMES = [
    Outcome.from_exit(0),
    Outcome.from_exit(3),
    Outcome.from_exit(1),
    Outcome.from_exit(None, 9),
    Outcome.infra("boom"),
]


def fresh_database() -> tuple[Database, Path]:
    """A store at the head revision (copied: migrating once per example would be slow) with
    tenant 1, in a directory of its own."""
    workdir = Path(tempfile.mkdtemp(prefix="nimbus-sm-"))
    db = Database(migrated_sqlite(workdir / "nimbus.db"))
    with db.session(write=True) as s:
        s.add(Tenant(id=1, name="acme"))
    return db, workdir


class QueueMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")
    attempts = Bundle("attempts")

    def __init__(self) -> None:
        super().__init__()
        self.db, self.workdir = fresh_database()
        # Claims break ties between equal jobs by id: random ids would make an example
        # claim different jobs when hypothesis replays it. Ids in submission order instead.
        numbers = itertools.count()
        self._new_job_id = repo.new_job_id
        repo.new_job_id = lambda: f"job_{next(numbers):06d}"
        self.now = T0
        self.terminal: dict[str, JobState] = {}
        self.accepted_metrics = 0

    def teardown(self) -> None:
        repo.new_job_id = self._new_job_id
        self.db.dispose()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _running(self, attempt_id: str) -> bool:
        with self.db.session() as s:
            attempt = repo.get_attempt(s, attempt_id)
        return attempt is not None and attempt.state is AttemptState.RUNNING

    @rule(
        target=jobs,
        retries=st.integers(0, 2),
        priority=st.integers(0, 2),
        deadline=st.sampled_from([None, 20.0, 200.0]),
        cpus=st.sampled_from([0.5, 1.0, 2.0]),
    )
    def submit(self, retries: int, priority: int, deadline: float | None, cpus: float) -> str:
        spec = JobSpec(
            model="m",
            max_retries=retries,
            priority=priority,
            deadline_seconds=deadline,
            resources=Resources(cpus=cpus, memory_bytes=0),
        )
        with self.db.session(write=True) as s:
            return repo.submit(s, 1, spec, self.now).id

    @rule(target=attempts, owner=st.sampled_from(["a", "b"]), limit=st.sampled_from([1, None]))
    def claim(self, owner: str, limit: int | None) -> object:
        with self.db.session(write=True) as s:
            claims = repo.claim_next(
                s,
                capacity=NODE,
                owner=owner,
                now=self.now,
                lease_seconds=LEASE,
                tenant_limit=3,
                limit=limit,
            )
        for c in claims:
            assert c.job.id not in self.terminal
        return multiple(*[c.attempt.id for c in claims])

    @rule(seconds=st.sampled_from([1, 3, 10, 31]))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(attempt=attempts)
    def heartbeat(self, attempt: str) -> None:
        with self.db.session() as s:
            row = repo.get_attempt(s, attempt)
        assert row is not None and row.lease_expires_at is not None
        alive = row.state is AttemptState.RUNNING and row.lease_expires_at > self.now
        try:
            with self.db.session(write=True) as s:
                repo.heartbeat(s, attempt, self.now, LEASE)
            assert alive
        except Fenced:
            assert not alive

    @rule(attempt=attempts, outcome=st.sampled_from(OUTCOMES))
    def finish(self, attempt: str, outcome: Outcome) -> None:
        running = self._running(attempt)
        try:
            with self.db.session(write=True) as s:
                repo.finish_attempt(s, attempt, outcome, self.now, POLICY)
            assert running
        except Fenced:
            assert not running

    @rule(attempt=attempts)
    def write_metric(self, attempt: str) -> None:
        running = self._running(attempt)
        try:
            with self.db.session(write=True) as s:
                job_outputs.add_metrics(s, attempt, [(1, "loss", 0.1)], self.now)
            assert running
            self.accepted_metrics += 1
        except Fenced:
            assert not running

    @rule()
    def expire(self) -> None:
        with self.db.session(write=True) as s:
            repo.requeue_expired(s, self.now, POLICY)
            repo.expire_deadlines(s, self.now)

    @rule(job=jobs)
    def cancel(self, job: str) -> None:
        with self.db.session(write=True) as s:
            repo.request_cancel(s, job, self.now)

    @rule(job=consumes(jobs))
    def forget(self, job: str) -> None:
        """Keeps the bundle from growing without bound."""

    @invariant()
    def queue_is_consistent(self) -> None:
        with self.db.session() as s:
            jobs = s.scalars(select(JobRow)).all()
            running = s.scalars(
                select(JobAttemptRow).where(JobAttemptRow.state == AttemptState.RUNNING.value)
            ).all()
            metrics = s.scalar(select(func.count()).select_from(JobMetricRow))
            per_job: dict[str, int] = {}
            for attempt in running:
                per_job[attempt.job_id] = per_job.get(attempt.job_id, 0) + 1
            for job in jobs:
                state = JobState(job.state)
                assert per_job.get(job.id, 0) <= 1
                if state is JobState.RUNNING:
                    assert per_job.get(job.id) == 1
                    assert any(a.id == job.current_attempt_id for a in running)
                else:
                    assert per_job.get(job.id, 0) == 0
                assert job.attempts <= job.max_retries + 1
                count = s.scalar(
                    select(func.count())
                    .select_from(JobAttemptRow)
                    .where(JobAttemptRow.job_id == job.id)
                )
                assert count == job.attempts
                if job.id in self.terminal:
                    assert state is self.terminal[job.id]  # terminal states are final
                elif state.terminal:
                    self.terminal[job.id] = state
        assert metrics == self.accepted_metrics  # fenced writes never land


QueueMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueue = QueueMachine.TestCase
