"""The job queue repository on both metadata store backends (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect

from nimbus.db import job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.queue import DbQueue
from nimbus.db.tables import Tenant
from nimbus.errors import InvalidInput, NotFound
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import (
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
from nimbus.jobs.policy import Decision, Outcome, RetryPolicy
from nimbus.jobs.tokens import mint_token
from nimbus.security import hash_token

T0 = datetime(2030, 1, 1, tzinfo=UTC)
BIG = Capacity(cpus=64, gpus=8, memory_bytes=1 << 40)
POLICY = RetryPolicy(base_seconds=10, factor=2, cap_seconds=100)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def submit(db: Database, tenant: int = 1, at_s: float = 0, **kw: object) -> str:
    spec = JobSpec(model="mlp", dataset="iris", **kw)  # type: ignore[arg-type]
    with db.session(write=True) as s:
        return repo.submit(s, tenant, spec, at(at_s), capacity=BIG).id


def claim(db: Database, now: float, owner: str = "node-a", **kw: object) -> list[Claim]:
    args: dict[str, Any] = {
        "capacity": BIG,
        "owner": owner,
        "now": at(now),
        "lease_seconds": 30,
        **kw,
    }
    with db.session(write=True) as s:
        return repo.claim_next(s, **args)


def finish(db: Database, attempt_id: str, outcome: Outcome, now: float) -> Decision:
    with db.session(write=True) as s:
        return repo.finish_attempt(s, attempt_id, outcome, at(now), POLICY)


def job(db: Database, job_id: str) -> Job:
    with db.session() as s:
        found = repo.get(s, job_id)
    assert found is not None
    return found


def test_migration_creates_job_tables(db: Database) -> None:
    names = set(inspect(db.engine).get_table_names())
    assert {
        "jobs",
        "job_attempts",
        "job_metrics",
        "job_logs",
        "job_checkpoints",
        "job_artifacts",
    } <= names


def test_submit_get_list_and_refuse_impossible_requests(db: Database) -> None:
    a = submit(db, priority=5, deadline_seconds=60)
    b = submit(db, tenant=2)
    with db.session() as s:
        got = repo.get(s, a, tenant_id=1)
        assert got is not None and got.state is JobState.QUEUED and got.priority == 5
        assert got.deadline_at == at(60) and got.spec.dataset == "iris"
        assert repo.get(s, a, tenant_id=2) is None  # another tenant's job answers "none"
        assert [j.id for j in repo.list_jobs(s, 2)] == [b]
    too_big = JobSpec(model="cnn", resources=Resources(gpus=1, workers=2))
    with pytest.raises(InvalidInput, match="gpus") as info, db.session(write=True) as s:
        repo.submit(s, 1, too_big, T0, capacity=Capacity(cpus=4, gpus=1, memory_bytes=1 << 34))
    assert info.value.details["resource"] == "gpus"


def test_claim_orders_by_priority_then_fifo_and_leases(db: Database) -> None:
    low = submit(db, at_s=0)
    high = submit(db, at_s=1, priority=10)
    later = submit(db, at_s=2)
    claims = claim(db, 5, limit=2)
    assert [c.job.id for c in claims] == [high, low]
    first = claims[0]
    assert first.attempt.number == 1 and first.attempt.lease_expires_at == at(35)
    assert first.job.state is JobState.RUNNING and first.job.current_attempt_id == first.attempt.id
    with db.session() as s:
        found = repo.attempt_for_token(s, hash_token(first.token))
        assert found is not None and found[1].id == first.attempt.id
        assert repo.attempt_for_token(s, hash_token("njt_wrong")) is None
    assert [c.job.id for c in claim(db, 6)] == [later]
    assert claim(db, 7) == []


def test_tenant_limit_and_node_capacity(db: Database) -> None:
    ids = [submit(db, tenant=1, at_s=i) for i in range(3)] + [submit(db, tenant=2, at_s=5)]
    claims = claim(db, 10, tenant_limit=2)
    assert [c.job.id for c in claims] == [ids[0], ids[1], ids[3]]
    small = Capacity(cpus=2, gpus=0, memory_bytes=1 << 40)
    # Another node sees tenant 1 at its limit; its own capacity is untouched by node-a's jobs.
    assert claim(db, 11, owner="node-b", capacity=small, tenant_limit=2) == []
    assert [c.job.id for c in claim(db, 11, owner="node-b", capacity=small)] == [ids[2]]


def test_heartbeat_extends_lease_and_fences_stale_attempts(db: Database) -> None:
    submit(db)
    (c,) = claim(db, 0)
    with db.session(write=True) as s:
        lease = repo.heartbeat(s, c.attempt.id, at(20), 30, owner="node-a")
    assert lease.expires_at == at(50) and not lease.cancel_requested
    with pytest.raises(Fenced), db.session(write=True) as s:
        repo.heartbeat(s, c.attempt.id, at(21), 30, owner="node-b")  # not its lease
    with pytest.raises(Fenced), db.session(write=True) as s:
        repo.heartbeat(s, c.attempt.id, at(50), 30)  # expired: lost even before the requeue
    with db.session(write=True) as s:
        requeued = repo.requeue_expired(s, at(51), POLICY)
    assert [(jid, d.job_state) for jid, d in requeued] == [(c.job.id, JobState.QUEUED)]
    assert requeued[0][1].not_before == at(61)
    assert claim(db, 60) == []  # backoff
    (c2,) = claim(db, 61)
    assert c2.attempt.number == 2
    stale = c.attempt.id
    with db.session(write=True) as s:
        assert repo.heartbeat_many(s, [stale, c2.attempt.id], "node-a", at(62), 30) == {
            stale: None,
            c2.attempt.id: Lease(c2.attempt.id, at(92), False),
        }
    for write in (
        lambda s: job_outputs.add_metrics(s, stale, [(1, "loss", 0.5)], at(62)),
        lambda s: job_outputs.set_result(s, stale, {"accuracy": 1.0}),
        lambda s: job_outputs.record_checkpoint(s, stale, step=1, blob_key="k", now=at(62)),
        lambda s: job_outputs.add_artifact(s, stale, "model", "k", 1, at(62)),
        lambda s: job_outputs.append_logs(s, stale, ["zombie"], at(62)),
        lambda s: repo.finish_attempt(s, stale, Outcome.from_exit(0), at(62)),
    ):
        with pytest.raises(Fenced), db.session(write=True) as s:
            write(s)
    assert job(db, c.job.id).result is None
    with db.session() as s:
        assert (
            job_outputs.read_metrics(s, c.job.id) == [] and job_outputs.read_logs(s, c.job.id) == []
        )
        assert repo.attempt_for_token(s, hash_token(c.token)) is None


def test_attempt_outcomes(db: Database) -> None:
    ok, user, sig = submit(db, at_s=0), submit(db, at_s=1), submit(db, at_s=2, max_retries=1)
    by_job = {c.job.id: c.attempt.id for c in claim(db, 3)}
    assert finish(db, by_job[ok], Outcome.from_exit(0), 4).job_state is JobState.SUCCEEDED
    d = finish(db, by_job[user], Outcome.from_exit(3), 4)
    assert (d.job_state, d.reason) == (JobState.FAILED, ExitReason.USER_ERROR)
    assert job(db, user).attempts == 1  # no retry burnt
    d = finish(db, by_job[sig], Outcome.from_exit(None, 9), 4)
    assert d.job_state is JobState.QUEUED and d.not_before == at(14)
    (again,) = claim(db, 14)
    d = finish(db, again.attempt.id, Outcome.from_exit(None, 9), 15)
    assert d.job_state is JobState.FAILED and "retries exhausted" in d.message
    done = job(db, sig)
    assert done.state is JobState.FAILED and done.attempts == 2 and done.finished_at == at(15)
    with db.session() as s:
        attempts = repo.list_attempts(s, sig)
    assert [a.exit_signal for a in attempts] == [9, 9]
    assert all(a.state is AttemptState.FAILED for a in attempts)


def test_a_jobs_lock_is_recorded_for_its_retries(db: Database) -> None:
    """Issue 15: the pins an attempt resolved are kept with the job; its retry's claim
    carries them (the executor installs them without resolving)."""
    job_id = submit(db, requirements=("tomli>=2",), max_retries=1)
    (first,) = claim(db, 1)
    assert first.job.environment_lock == ()
    DbQueue(db).record_lock(job_id, ("tomli==2.0.1",))
    finish(db, first.attempt.id, Outcome.from_exit(None, 9), 2)
    (retry,) = claim(db, 20)
    assert retry.job.environment_lock == ("tomli==2.0.1",)


def test_deadline_beats_retries_and_fails_running_jobs(db: Database) -> None:
    queued = submit(db, at_s=0, deadline_seconds=5, priority=-1)
    running = submit(db, at_s=0, deadline_seconds=100, max_retries=5)
    (c,) = claim(db, 1, limit=1)
    assert c.job.id == running
    with db.session(write=True) as s:
        assert repo.expire_deadlines(s, at(6)) == [queued]
    assert job(db, queued).exit_reason is not None
    assert "deadline exceeded" in (job(db, queued).exit_reason or "")
    # A retry whose backoff would end past the deadline is not worth queueing.
    d = finish(db, c.attempt.id, Outcome.from_exit(None, 9), 95)
    assert d.reason is ExitReason.DEADLINE and d.job_state is JobState.FAILED
    other = submit(db, at_s=0, deadline_seconds=10)
    (c2,) = claim(db, 1)
    with db.session(write=True) as s:
        assert repo.expire_deadlines(s, at(10)) == [other]
    with db.session() as s:
        attempt = repo.get_attempt(s, c2.attempt.id)
        assert attempt is not None and attempt.state is AttemptState.FAILED
        assert repo.running_status(s, [c2.attempt.id]) == {c2.attempt.id: None}


def test_cancel_queued_and_running(db: Database) -> None:
    queued, running = submit(db, at_s=1), submit(db, at_s=0)
    (c,) = claim(db, 2, limit=1)
    with db.session(write=True) as s:
        assert repo.request_cancel(s, queued, at(3)).state is JobState.CANCELLED
        flagged = repo.request_cancel(s, running, at(3), tenant_id=1)
    assert flagged.state is JobState.RUNNING and flagged.cancel_requested
    with db.session(write=True) as s:
        assert repo.heartbeat(s, c.attempt.id, at(4), 30).cancel_requested
        assert repo.running_status(s, [c.attempt.id]) == {c.attempt.id: True}
    d = finish(db, c.attempt.id, Outcome.from_exit(None, 15), 5)
    assert d.job_state is JobState.CANCELLED
    with db.session(write=True) as s:  # idempotent on finished jobs
        assert repo.request_cancel(s, running, at(6)).state is JobState.CANCELLED
    with pytest.raises(NotFound), db.session(write=True) as s:
        repo.request_cancel(s, running, at(6), tenant_id=2)


def test_logs_metrics_checkpoints_artifacts_result(db: Database) -> None:
    job_id = submit(db)
    (c,) = claim(db, 0)
    aid = c.attempt.id
    with db.session(write=True) as s:
        assert job_outputs.append_logs(s, aid, ["a\n", "b\n"], at(1)) == 2
        assert job_outputs.append_logs(s, aid, ["c\n"], at(2)) == 3
        job_outputs.add_metrics(
            s, aid, [(1, "loss", 0.9), (2, "loss", 0.5), (2, "acc", 0.7)], at(2)
        )
        first = job_outputs.record_checkpoint(s, aid, step=10, epoch=1, blob_key="k1", now=at(3))
        partial = job_outputs.record_checkpoint(
            s, aid, step=20, blob_key="k2", now=at(4), complete=False
        )
        job_outputs.add_artifact(s, aid, "model.safetensors", "k3", 123, at(5))
        job_outputs.set_result(s, aid, {"accuracy": 0.93})
    with db.session() as s:
        assert [ch.data for ch in job_outputs.read_logs(s, job_id)] == ["a\n", "b\n", "c\n"]
        assert [ch.seq for ch in job_outputs.read_logs(s, job_id, after_seq=2)] == [3]
        assert [m.value for m in job_outputs.read_metrics(s, job_id, "loss")] == [0.9, 0.5]
        latest = job_outputs.latest_checkpoint(s, job_id)
        assert latest is not None and latest.id == first and latest.epoch == 1
        assert job_outputs.list_artifacts(s, job_id)[0]["size"] == 123
    with db.session(write=True) as s:
        job_outputs.complete_checkpoint(s, aid, partial)
    finish(db, aid, Outcome.from_exit(0), 6)
    with db.session() as s:
        latest = job_outputs.latest_checkpoint(s, job_id)
        assert latest is not None and latest.step == 20
    with db.session(write=True) as s:  # the tail of a finished attempt's output still lands
        assert job_outputs.append_logs(s, aid, ["bye\n"], at(7)) == 4
    assert job(db, job_id).result == {"accuracy": 0.93}


def test_abandon_owned_on_restart(db: Database) -> None:
    a, b = submit(db, at_s=0), submit(db, at_s=1)
    claims = claim(db, 2)
    keep = claims[1].attempt.id
    with db.session(write=True) as s:
        decisions = repo.abandon_owned(s, "node-a", at(3), keep=[keep], policy=POLICY)
    assert [jid for jid, _ in decisions] == [a]
    assert job(db, a).state is JobState.QUEUED and job(db, b).state is JobState.RUNNING


@pytest.mark.parametrize("tenant_limit", [None, 3])
def test_concurrent_schedulers_claim_each_job_once(
    database_url: str, tenant_limit: int | None
) -> None:
    """Four schedulers, each with its own engine, race to claim 40 jobs (without a tenant
    limit only row locks keep them apart; with one, the per-tenant locks too)."""
    setup = Database(database_url)
    upgrade(setup.engine)
    with setup.session(write=True) as s:
        s.add_all([Tenant(id=1, name="acme"), Tenant(id=2, name="globex")])
    ids = [submit(setup, tenant=1 + i % 2, at_s=i) for i in range(40)]
    claimed: list[str] = []
    running_per_tenant: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def slow_token() -> str:
        time.sleep(0.005)  # widens the window between reading the queue and committing
        return mint_token()

    errors: list[BaseException] = []

    def scheduler(n: int) -> None:
        try:
            run(n)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    def run(n: int) -> None:
        db = Database(database_url)
        barrier.wait()
        deadline = time.monotonic() + 30
        while len(claimed) < len(ids) and time.monotonic() < deadline:
            with db.session(write=True) as s:
                got = repo.claim_next(
                    s,
                    capacity=BIG,
                    owner=f"node-{n}",
                    now=at(100),
                    lease_seconds=30,
                    tenant_limit=tenant_limit,
                    limit=2,
                    new_token=slow_token,
                )
            with lock:
                claimed.extend(c.job.id for c in got)
            with db.session(write=True) as s:
                with lock:
                    running = repo.list_jobs(s, 1, states=[JobState.RUNNING])
                    running_per_tenant.append(len(running))
                for c in got:
                    repo.finish_attempt(s, c.attempt.id, Outcome.from_exit(0), at(100))
        db.dispose()

    threads = [threading.Thread(target=scheduler, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Counter(claimed) == Counter(ids)  # every job once, none twice
    if tenant_limit is not None:
        assert max(running_per_tenant) <= tenant_limit
    with setup.session() as s:
        assert all(len(repo.list_attempts(s, j)) == 1 for j in ids)
    setup.dispose()
