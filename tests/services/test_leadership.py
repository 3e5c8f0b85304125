"""The election of two control planes in one process, on the real PostgreSQL, each with a
real scheduler and real attempt processes: a leader that could not renew its lease is
deposed, its writes are refused, its attempt is killed, and the new leader runs the job."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nimbus.db import jobs as jobs_repo
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.queue import DbQueue
from nimbus.db.tables import Tenant
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import AttemptState, Deposed, Fence, JobSpec, JobState
from nimbus.jobs.executors.base import Program
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.policy import RetryPolicy
from nimbus.jobs.scheduler import Scheduler, SchedulerConfig
from nimbus.services.cluster import ClusterService, Identity
from nimbus.services.leadership import Election

NODE = Capacity(cpus=2, gpus=0, memory_bytes=1 << 33)
LEADER_LEASE = 5.0
SLEEPER = Program(code="import time\nprint('up', flush=True)\ntime.sleep(600)")


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    upgrade(database.engine)
    with database.session(write=True) as s:
        s.add(Tenant(id=1, name="acme"))
    yield database
    database.dispose()


def node(db: Database, name: str, root: Path, clock: Clock) -> tuple[Election, list[Scheduler]]:
    executor = LocalExecutor(root / name, grace_seconds=1)
    made: list[Scheduler] = []

    def make_scheduler(fence: Fence) -> Scheduler:
        scheduler = Scheduler(
            DbQueue(db, fence),
            executor,
            NODE,
            name,
            jobs_root=root / name,
            config=SchedulerConfig(
                tick_seconds=0.05,
                lease_seconds=30,
                heartbeat_seconds=0,
                retry=RetryPolicy(base_seconds=0),
            ),
            clock=clock,
            launch_fn=lambda job, attempt: SLEEPER,
        )
        made.append(scheduler)
        return scheduler

    cluster = ClusterService(
        db,
        Identity(
            id=name,
            url=f"http://{name}",
            executor="local",
            capacity=NODE,
            jobs_dir=str(root / name),
        ),
        lease_seconds=LEADER_LEASE,
        clock=clock,
    )
    return Election(cluster, make_scheduler=make_scheduler), made


def wait(what: str, check: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_deposed_leader_stops_and_the_new_one_runs_the_job(db: Database, tmp_path: Path) -> None:
    clock = Clock()
    a, a_terms = node(db, "cp-a", tmp_path, clock)
    b, b_terms = node(db, "cp-b", tmp_path, clock)
    with db.session(write=True) as s:
        job_id = jobs_repo.submit(
            s, 1, JobSpec(model="mlp", dataset="iris"), datetime.now(UTC), capacity=NODE
        ).id
    try:
        a.cluster.register()
        b.cluster.register()
        a.run_round()
        b.run_round()
        assert a.fence == Fence("cp-a", 1) and b.fence is None
        (scheduler_a,) = a_terms
        wait("the leader to start the job", lambda: scheduler_a.local)
        (first,) = scheduler_a.local
        process = scheduler_a.local[first].handle

        clock.t += LEADER_LEASE + 1  # a did not renew in time (a stall, a partition)
        b.run_round()
        assert b.fence == Fence("cp-b", 2)
        with pytest.raises(Deposed):  # a's scheduler writes are refused from now on
            scheduler_a.queue.heartbeat([first], "cp-a", scheduler_a.now(), 30)

        a.run_round()  # a learns it was deposed: it stops and kills its attempt
        assert a.fence is None
        assert scheduler_a.local == {}
        assert scheduler_a.executor.poll(process) is not None  # the process is gone
        with db.session() as s:
            attempt = jobs_repo.get_attempt(s, first)
        assert attempt is not None and attempt.state is AttemptState.RUNNING  # refused end

        clock.t += 31  # its attempt lease runs out: the new leader requeues and runs it
        (scheduler_b,) = b_terms
        wait("the new leader to run the job again", lambda: scheduler_b.local)
        with db.session() as s:
            attempts = jobs_repo.list_attempts(s, job_id)
            job = jobs_repo.get(s, job_id)
        assert [x.state for x in attempts] == [AttemptState.LOST, AttemptState.RUNNING]
        assert attempts[1].lease_owner == "cp-b"
        assert job is not None and job.state is JobState.RUNNING

        b.run_round()  # renewed (the loop would have, every second)
        status = b.cluster.status()
        assert status.leader == "cp-b" and status.epoch == 2
        assert [(p.id, p.leader) for p in status.control_planes] == [
            ("cp-a", False),
            ("cp-b", True),
        ]
        (running,) = status.nodes
        assert running.control_plane == "cp-b"
        assert [r.job_id for r in running.running] == [job_id]
    finally:
        a.stop()
        b.stop()
        for scheduler in [*a_terms, *b_terms]:
            scheduler.shutdown()
            scheduler.executor.close()
