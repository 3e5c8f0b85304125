"""The claim decides as ``pick`` over the whole queue (nimbus.db.queue_read), on SQLite and
PostgreSQL: a deep queue whose first jobs cannot start, and random queues against ``pick``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.orm import Session

from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.queue_read import QueueRead
from nimbus.db.tables import JobAttemptRow, JobRow, Tenant
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import AttemptState, JobSpec, JobState, Resources
from nimbus.jobs.policy import QueuedJob, RunningJob, pick
from tests.helpers import PostgresServer, rolled_back

T0 = datetime(2030, 1, 1, tzinfo=UTC)
GIB = 1 << 30
CPU_NODE = Capacity(cpus=4, gpus=0, memory_bytes=16 * GIB)
GPU = Resources(cpus=1, gpus=1, memory_bytes=GIB)
CPU = Resources(cpus=1, memory_bytes=GIB)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """One store per backend for the module: every test leaves it as it found it."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('claim') / 'nimbus.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.create_database(f"claim_read_{os.getpid()}")
    database = Database(url)
    upgrade(database.engine)
    with database.session(write=True) as s:
        s.add_all([Tenant(id=t, name=f"tenant-{t}") for t in (1, 2, 3)])
    yield database
    database.dispose()


def _row(job: QueuedJob, state: JobState, attempt_id: str | None = None) -> dict[str, object]:
    res = job.resources
    return {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "spec": JobSpec(model="mlp", dataset="iris", resources=res).to_dict(),
        "state": state.value,
        "priority": job.priority,
        "cpus": res.cpus,
        "gpus": res.gpus,
        "memory_bytes": res.memory_bytes,
        "workers": res.workers,
        "attempts": 1 if attempt_id else 0,
        "current_attempt_id": attempt_id,
        "max_retries": 0,
        "not_before": job.not_before,
        "cancel_requested": False,
        "log_seq": 0,
        "created_at": job.created_at,
    }


def add_jobs(
    s: Session, queued: Sequence[QueuedJob], running: Sequence[tuple[QueuedJob, str]] = ()
) -> None:
    """Bulk inserts: queued jobs, and running ones with their attempt on a node."""
    rows = [_row(job, JobState.QUEUED) for job in queued]
    rows += [_row(job, JobState.RUNNING, f"a-{job.id}") for job, _ in running]
    if rows:
        s.execute(insert(JobRow), rows)
    if running:
        attempts = [
            {
                "id": f"a-{job.id}",
                "job_id": job.id,
                "number": 1,
                "state": AttemptState.RUNNING.value,
                "lease_owner": node,
                "lease_expires_at": at(10_000),
                "started_at": T0,
            }
            for job, node in running
        ]
        s.execute(insert(JobAttemptRow), attempts)


def claim_ids(s: Session, capacity: Capacity, now: datetime, **kw: object) -> list[str]:
    claims = repo.claim_next(
        s,
        capacity=capacity,
        owner="node-a",
        now=now,
        lease_seconds=30,
        **kw,  # type: ignore[arg-type]
    )
    return [c.job.id for c in claims]


def test_a_deep_queue_that_cannot_start_does_not_hide_a_job_that_can(db: Database) -> None:
    """250 queued jobs ahead of one that can start (the claim once read only the first 200):
    GPU jobs on a node without GPUs, or the jobs of a tenant at its limit."""
    gpu_jobs = [QueuedJob(f"gpu{i:03d}", 1 + i % 2, 10, at(i), GPU) for i in range(250)]
    with rolled_back(db) as s:
        add_jobs(s, [*gpu_jobs, QueuedJob("cpu", 2, 0, at(1000), CPU)])
        assert len(QueueRead(s, at(2000)).jobs()) == 3  # a head per (tenant, resources)
        assert claim_ids(s, CPU_NODE, at(2000)) == ["cpu"]
    at_limit = [QueuedJob(f"t1-{i:03d}", 1, 10, at(i), CPU) for i in range(250)]
    elsewhere = [(QueuedJob("t1-running", 1, 0, T0, CPU), "node-b")]
    with rolled_back(db) as s:
        add_jobs(s, [*at_limit, QueuedJob("t2", 2, 0, at(1000), CPU)], elsewhere)
        assert claim_ids(s, CPU_NODE, at(2000), tenant_limit=1) == ["t2"]


def test_the_read_goes_as_far_as_the_walk(db: Database) -> None:
    """A group whose jobs all start is read further (12 start from one group); and with
    reservation, an old job behind a young one of its group stops the walk (the node
    drains for it: the small job of another tenant behind it does not start)."""
    small = Resources(cpus=0.5, memory_bytes=GIB)
    with rolled_back(db) as s:
        add_jobs(s, [QueuedJob(f"j{i:02d}", 1, 0, at(i), small) for i in range(12)])
        assert claim_ids(s, Capacity(cpus=16, gpus=0, memory_bytes=64 * GIB), at(20)) == [
            f"j{i:02d}" for i in range(12)
        ]
    two = Resources(cpus=2, memory_bytes=GIB)
    queued = [
        QueuedJob("young", 1, 5, at(99), two),  # first in its group, but not waited long
        QueuedJob("old", 1, 0, at(0), two),  # waited long: reserved for
        QueuedJob("small", 2, -1, at(0), CPU),
    ]
    busy = [(QueuedJob("busy", 3, 0, T0, Resources(cpus=3, memory_bytes=GIB)), "node-a")]
    with rolled_back(db) as s:
        add_jobs(s, queued, busy)
        assert claim_ids(s, CPU_NODE, at(100), reserve_after=timedelta(seconds=30)) == []
        assert claim_ids(s, CPU_NODE, at(100)) == ["small"]


shapes = st.sampled_from(
    [
        Resources(cpus=1, memory_bytes=GIB),
        Resources(cpus=0.5, memory_bytes=GIB),
        Resources(cpus=2, memory_bytes=4 * GIB),
        Resources(cpus=1, gpus=1, memory_bytes=2 * GIB),
        Resources(cpus=1, memory_bytes=GIB, workers=2),
    ]
)
capacities = st.sampled_from(
    [
        Capacity(cpus=2, gpus=0, memory_bytes=4 * GIB),
        Capacity(cpus=8, gpus=1, memory_bytes=16 * GIB),
        Capacity(cpus=16, gpus=2, memory_bytes=64 * GIB),
        Capacity(cpus=32, gpus=4, memory_bytes=128 * GIB),
    ]
)
tenant_limits = st.one_of(
    st.none(),
    st.integers(0, 5),
    st.dictionaries(st.integers(1, 3), st.integers(0, 4), max_size=3),
)


@st.composite
def a_queue(draw: st.DrawFn) -> tuple[list[QueuedJob], list[tuple[QueuedJob, str]]]:
    """Up to 40 queued jobs of few tenants and shapes (so groups hold many jobs), some not
    yet due, and a few running on this node or another."""
    tenants = st.integers(1, draw(st.integers(1, 3)))
    kinds = st.sampled_from(draw(st.lists(shapes, min_size=1, max_size=3)))
    queued = []
    for i in range(draw(st.integers(0, 40))):
        created = draw(st.integers(0, 10))  # ties: the order falls back on the id
        delay = draw(st.sampled_from([None, None, None, 0, 5, 30]))
        queued.append(
            QueuedJob(
                f"j{i:02d}",
                draw(tenants),
                draw(st.sampled_from([0, 0, 5, -1])),
                at(created),
                draw(kinds),
                at(created + delay) if delay is not None else None,
            )
        )
    running = [
        (
            QueuedJob(f"r{i}", draw(tenants), 0, T0, draw(shapes)),
            draw(st.sampled_from(["node-a", "node-b"])),
        )
        for i in range(draw(st.integers(0, 4)))
    ]
    return queued, running


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    queue=a_queue(),
    capacity=capacities,
    tenant_limit=tenant_limits,
    reserve_after=st.sampled_from([None, timedelta(seconds=0), timedelta(seconds=8)]),
    limit=st.sampled_from([None, None, 1, 3]),
    now=st.integers(5, 25),
)
def test_the_claim_chooses_what_pick_chooses_over_the_whole_queue(
    db: Database,
    queue: tuple[list[QueuedJob], list[tuple[QueuedJob, str]]],
    capacity: Capacity,
    tenant_limit: int | dict[int, int] | None,
    reserve_after: timedelta | None,
    limit: int | None,
    now: int,
) -> None:
    queued, running = queue
    expected = pick(
        queued,
        [RunningJob(j.id, j.tenant_id, j.resources, node == "node-a") for j, node in running],
        capacity,
        tenant_limit,
        at(now),
        reserve_after=reserve_after,
    )[:limit]
    with rolled_back(db) as s:
        add_jobs(s, queued, running)
        chosen = claim_ids(
            s,
            capacity,
            at(now),
            tenant_limit=tenant_limit,
            reserve_after=reserve_after,
            limit=limit,
        )
    assert chosen == expected
