"""The scheduler loop end to end: SQLite, real processes, the local executor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nimbus.db import job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.queue import DbQueue
from nimbus.db.tables import Tenant
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Attempt, Job, JobSpec, JobState
from nimbus.jobs.executors.base import Program
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.policy import RetryPolicy
from nimbus.jobs.scheduler import Scheduler, SchedulerConfig
from nimbus.security import hash_token
from tests.helpers import migrated_sqlite
from tests.jobs.conftest import wait_gone

NODE = Capacity(cpus=8, gpus=0, memory_bytes=1 << 40)
FAST = SchedulerConfig(
    lease_seconds=30,
    heartbeat_seconds=0.1,
    tick_seconds=0.02,
    retry=RetryPolicy(base_seconds=0.01, factor=1, cap_seconds=0.01),
)


def inline(job: Job, attempt: Attempt) -> Program:
    """Tests put the job's code in params["code"]."""
    return Program(code=job.spec.params["code"])


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path / "nimbus.db"))
    with database.session(write=True) as s:
        s.add(Tenant(id=1, name="acme"))
    yield database
    database.dispose()


@pytest.fixture
def make_scheduler(db: Database, tmp_path: Path) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(
        instance: str = "node-a",
        clock: Callable[[], float] = time.time,
        config: SchedulerConfig = FAST,
    ) -> Scheduler:
        root = tmp_path / "jobs"
        scheduler = Scheduler(
            DbQueue(db),
            LocalExecutor(root, grace_seconds=0.3),
            NODE,
            instance,
            jobs_root=root,
            config=config,
            clock=clock,
            launch_fn=inline,
        )
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.shutdown(timeout=5)
        scheduler.executor.close()


def submit(db: Database, code: str, **kw: object) -> str:
    spec = JobSpec(model="inline", params={"code": code}, **kw)  # type: ignore[arg-type]
    with db.session(write=True) as s:
        return repo.submit(s, 1, spec, repo_now()).id


def repo_now() -> datetime:
    return datetime.now(UTC)


def get(db: Database, job_id: str) -> Job:
    with db.session() as s:
        job = repo.get(s, job_id)
    assert job is not None
    return job


def logs(db: Database, job_id: str) -> str:
    with db.session() as s:
        return "".join(c.data for c in job_outputs.read_logs(s, job_id))


def run_until(schedulers: list[Scheduler], done: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        for scheduler in schedulers:
            scheduler.tick()
        time.sleep(0.02)


def finished(db: Database, job_id: str) -> Callable[[], bool]:
    return lambda: get(db, job_id).state.terminal


def test_success_logs_and_job_token(db: Database, make_scheduler: Callable[..., Scheduler]) -> None:
    code = (
        "import os, pathlib\nprint('hello from', os.environ['NIMBUS_JOB_ID'])\n"
        "pathlib.Path('token').write_text(os.environ['NIMBUS_JOB_TOKEN'])\n"
        "import time; time.sleep(0.3)"
    )
    job_id = submit(db, code)
    scheduler = make_scheduler()
    run_until([scheduler], lambda: bool(scheduler.local))
    (attempt_id,) = scheduler.local
    token_file = scheduler.jobs_root / job_id / attempt_id / "token"
    run_until([scheduler], token_file.exists)
    time.sleep(0.05)
    with db.session() as s:
        found = repo.attempt_for_token(s, hash_token(token_file.read_text()))
    assert found is not None and found[1].id == attempt_id
    run_until([scheduler], finished(db, job_id))
    job = get(db, job_id)
    assert job.state is JobState.SUCCEEDED and job.attempts == 1
    assert logs(db, job_id) == f"hello from {job_id}\n"
    with db.session() as s:
        assert repo.attempt_for_token(s, hash_token(token_file.read_text())) is None
    assert (scheduler.jobs_root / job_id / attempt_id / "job.json").exists()


def test_user_error_fails_at_once(db: Database, make_scheduler: Callable[..., Scheduler]) -> None:
    job_id = submit(db, "import sys; print('bad input'); sys.exit(3)", max_retries=3)
    run_until([make_scheduler()], finished(db, job_id))
    job = get(db, job_id)
    assert (
        job.state is JobState.FAILED
        and job.attempts == 1
        and "not retried" in (job.exit_reason or "")
    )


def test_killed_job_is_retried_and_poison_job_fails(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    once = submit(db, f"import os\nif os.environ['NIMBUS_ATTEMPT_NUMBER'] == '1': {suicide}")
    poison = submit(db, suicide, max_retries=2)
    scheduler = make_scheduler()
    run_until([scheduler], lambda: finished(db, once)() and finished(db, poison)())
    assert get(db, once).state is JobState.SUCCEEDED and get(db, once).attempts == 2
    dead = get(db, poison)
    assert dead.state is JobState.FAILED and dead.attempts == 3
    assert "SIGKILL" in (dead.exit_reason or "") and "retries exhausted" in (dead.exit_reason or "")


def test_cancel_kills_the_process_group(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    code = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('grandchild', c.pid, flush=True)\ntime.sleep(600)"
    )
    job_id = submit(db, code)
    scheduler = make_scheduler()

    run_until([scheduler], lambda: "grandchild" in logs(db, job_id))
    with db.session(write=True) as s:
        repo.request_cancel(s, job_id, repo_now())
    run_until([scheduler], finished(db, job_id))
    assert get(db, job_id).state is JobState.CANCELLED
    assert wait_gone(int(logs(db, job_id).split()[1]))


def test_deadline_kills_a_running_job(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    job_id = submit(db, "import time; time.sleep(600)", deadline_seconds=0.5, max_retries=5)
    scheduler = make_scheduler()
    run_until([scheduler], finished(db, job_id))
    job = get(db, job_id)
    assert job.state is JobState.FAILED and "deadline exceeded" in (job.exit_reason or "")
    run_until([scheduler], lambda: not scheduler.local, timeout=5)  # the process is gone too


def test_lost_lease_moves_the_job_and_fences_the_old_attempt(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    """Node A hangs (stops ticking); node B, whose clock is past A's lease, takes the job."""
    job_id = submit(
        db,
        "import os, time\nprint('attempt', os.environ['NIMBUS_ATTEMPT_NUMBER'], flush=True)\n"
        # A's copy must still run when A wakes up, however slow the machine: only the
        # kill may end it.
        "if os.environ['NIMBUS_ATTEMPT_NUMBER'] == '1': time.sleep(600)",
    )
    a = make_scheduler("node-a")
    run_until([a], lambda: bool(a.local))
    later = Clock()
    later.offset = 60
    b = make_scheduler("node-b", clock=later)
    report = b.tick()
    assert report.requeued == [job_id]
    run_until([b], lambda: bool(b.local))
    woke = a.tick()  # A wakes up: its lease is gone, it kills its copy and records nothing
    assert len(woke.killed) == 1
    assert all(decision is None for decision in woke.finished.values())  # fenced
    run_until([a, b], finished(db, job_id))
    run_until([a], lambda: not a.local, timeout=5)
    job = get(db, job_id)
    assert job.state is JobState.SUCCEEDED and job.attempts == 2
    with db.session() as s:
        states = [att.state.value for att in repo.list_attempts(s, job_id)]
    assert states == ["lost", "succeeded"]


def test_restart_after_a_crash_kills_orphans_and_reruns(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    job_id = submit(
        db,
        "import os, time\nprint(os.getpid(), flush=True)\n"
        "if os.environ['NIMBUS_ATTEMPT_NUMBER'] == '1': time.sleep(600)",
    )
    crashed = make_scheduler("node-a")
    run_until([crashed], lambda: bool(crashed.local))
    run_until([crashed], lambda: bool(logs(db, job_id)))
    orphan = int(logs(db, job_id))
    crashed.local.clear()  # as if kill -9: the scheduler's memory is gone, its process not
    restarted = make_scheduler("node-a")
    assert job_id in restarted.recover()
    assert wait_gone(orphan)
    run_until([restarted], finished(db, job_id))
    assert get(db, job_id).state is JobState.SUCCEEDED and get(db, job_id).attempts == 2


def test_run_on_the_fork_server_leaves_attempts_and_shutdown_requeues(
    db: Database, tmp_path: Path
) -> None:
    root = tmp_path / "fs-jobs"
    executor = ForkServerExecutor(root, preload=["json"], grace_seconds=0.3)
    scheduler = Scheduler(
        DbQueue(db), executor, NODE, "node-fs", jobs_root=root, config=FAST, launch_fn=inline
    )
    quick = submit(db, "import json; print(json.dumps({'ok': True}))")
    slow = submit(db, "import time; time.sleep(600)", priority=-1)
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop, ready.set))
    thread.start()
    try:
        assert ready.wait(20), "on_ready was not called"
        deadline = time.monotonic() + 20
        while not (finished(db, quick)() and get(db, slow).state is JobState.RUNNING):
            assert time.monotonic() < deadline, "jobs did not start"
            time.sleep(0.02)
        stop.set()
        thread.join(20)
        assert not thread.is_alive()
        # A graceful stop leaves the running attempt to the next start's recovery ...
        assert get(db, slow).state is JobState.RUNNING and scheduler.local
        # ... unless the scheduler is shut down: then it is killed and its job requeued.
        scheduler.shutdown()
    finally:
        stop.set()
        thread.join(20)
        executor.close()
    assert get(db, quick).state is JobState.SUCCEEDED
    assert logs(db, quick) == '{"ok": true}\n'
    stopped = get(db, slow)
    assert stopped.state is JobState.QUEUED and "scheduler stopped" in (stopped.exit_reason or "")


def test_wake_starts_a_queued_job_without_waiting_for_the_tick(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    """With an hour between ticks, only wake() can start the job (as a submit does)."""
    slow = SchedulerConfig(lease_seconds=30, heartbeat_seconds=0.1, tick_seconds=3600)
    scheduler = make_scheduler(config=slow)
    stop = threading.Event()
    ready = threading.Event()
    loop = threading.Thread(target=scheduler.run, args=(stop, ready.set), daemon=True)
    loop.start()
    try:
        assert ready.wait(20)
        time.sleep(0.2)  # the loop's first tick is done: it now waits its hour
        job_id = submit(db, "print('woken')")
        scheduler.wake()
        deadline = time.monotonic() + 30
        while get(db, job_id).state is JobState.QUEUED and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(db, job_id).state is not JobState.QUEUED
    finally:
        stop.set()
        scheduler.wake()
        loop.join(10)
    assert not loop.is_alive()


def test_the_end_of_attempts_is_told_after_the_tick_that_recorded_it(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    """What a study's loop is woken by: its trial's job ended, its next one is asked now."""
    told: list[JobState] = []
    scheduler = make_scheduler()
    job_id = submit(db, "print('done')")
    scheduler.on_finished = lambda: told.append(get(db, job_id).state)
    run_until([scheduler], lambda: bool(told))
    for _ in range(3):
        scheduler.tick()
    assert told == [JobState.SUCCEEDED]  # once, with the end already recorded


def test_a_capacity_asked_at_each_claim_holds_jobs_while_it_offers_nothing(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    """A Ray cluster whose head is silent offers nothing: the job stays queued, its
    retries untouched, and starts once the capacity is back."""
    scheduler = make_scheduler()
    offered = [Capacity(cpus=0.0, gpus=0, memory_bytes=0)]
    scheduler.capacity = lambda: offered[0]
    job_id = submit(db, "print('ran')")
    for _ in range(3):
        assert scheduler.tick().started == []
    job = get(db, job_id)
    assert (job.state, job.attempts) == (JobState.QUEUED, 0)
    offered[0] = NODE
    run_until([scheduler], finished(db, job_id))
    assert get(db, job_id).state is JobState.SUCCEEDED


def test_affinity_joins_one_submitters_runs_of_the_same_code_and_data_only() -> None:
    from dataclasses import replace

    from nimbus.jobs.domain import Resources
    from nimbus.jobs.scheduler import affinity

    now = datetime(2026, 1, 1, tzinfo=UTC)
    spec = JobSpec(model="mlp", dataset="d:1", params={"lr": 0.1}, seed=1)
    job = Job(
        "j1",
        1,
        spec,
        JobState.QUEUED,
        0,
        0,
        None,
        2,
        None,
        None,
        False,
        now,
        None,
        None,
        None,
        None,
        "token-1",
    )
    program = Program(module="nimbus.runtime.job")
    mine = affinity(job, program)
    assert mine is not None
    # Another trial: other parameters, seed, priority, retries, job id.
    trial = replace(job, id="j2", priority=5, spec=replace(spec, params={"lr": 0.2}, seed=9))
    assert affinity(trial, program) == mine
    for other in (
        replace(job, tenant_id=2),
        replace(job, created_by="token-2"),
        replace(job, spec=replace(spec, model="code:sha256/ab/" + "c" * 64)),
        replace(job, spec=replace(spec, dataset="d:2")),
        replace(job, spec=replace(spec, requirements=("scipy==1.13.1",))),
        replace(job, spec=replace(spec, resources=Resources(memory_bytes=2 * 1024**3))),
    ):
        assert affinity(other, program) not in (mine, None)
    assert affinity(job, Program(code="print(1)")) != mine
    assert affinity(replace(job, created_by=None), program) is None


def test_after_a_kill_the_next_ticks_come_quickly_while_the_attempt_ends(
    db: Database, make_scheduler: Callable[..., Scheduler]
) -> None:
    """A cancelled attempt frees its slot within moments: the loop looks again every
    QUICK_SECONDS while it is ending (for at most QUICK_WINDOW_SECONDS), not a tick later."""
    from nimbus.jobs.scheduler import QUICK_SECONDS, QUICK_WINDOW_SECONDS

    now = [1000.0]
    tick = SchedulerConfig(tick_seconds=0.5)
    scheduler = make_scheduler(clock=lambda: now[0], config=tick)
    job_id = submit(
        db,
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\ntime.sleep(600)",
    )
    run_until([scheduler], lambda: "up" in logs(db, job_id))
    assert scheduler._pause() == 0.5  # nothing ending
    with db.session(write=True) as s:
        repo.request_cancel(s, job_id, repo_now())
    assert scheduler.tick().killed  # SIGTERM, ignored: it runs on through its grace
    assert scheduler._pause() == QUICK_SECONDS
    now[0] += QUICK_WINDOW_SECONDS  # past the window: a slow one waits for the tick
    assert scheduler._pause() == 0.5
