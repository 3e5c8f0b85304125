"""The leader lease and its fencing token, on both metadata store backends: one leader at a
time, a takeover only once the lease ran out, and a deposed leader's writes refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from nimbus.db import control_planes as repo
from nimbus.db import jobs as jobs_repo
from nimbus.db.engine import Database
from nimbus.db.queue import DbQueue
from nimbus.db.tables import Tenant
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import AttemptState, Deposed, Fence, JobSpec, JobState
from nimbus.jobs.policy import Outcome, RetryPolicy

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NODE = Capacity(cpus=8, gpus=0, memory_bytes=1 << 34)
POLICY = RetryPolicy(base_seconds=0)
LEASE = 5.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    database = Database(migrated_url)
    with database.session(write=True) as s:
        s.add(Tenant(id=1, name="acme"))
    yield database
    database.dispose()


def elect(db: Database, who: str, held: Fence | None, now: float) -> Fence | None:
    with db.session(write=True) as s:
        return repo.elect(s, who, held, at(now), LEASE)


def submit(db: Database) -> str:
    with db.session(write=True) as s:
        return jobs_repo.submit(s, 1, JobSpec(model="mlp", dataset="iris"), at(0), capacity=NODE).id


def test_one_leader_until_its_lease_runs_out(db: Database) -> None:
    a = elect(db, "a", None, 0)
    assert a == Fence("a", 1)
    assert elect(db, "b", None, 1) is None  # a leads
    assert elect(db, "a", a, 4) == a  # renewed until 9
    assert elect(db, "b", None, 8.9) is None
    b = elect(db, "b", None, 9.1)  # a went silent: b takes over, with a new epoch
    assert b == Fence("b", 2)
    assert elect(db, "a", a, 9.2) is None  # a is deposed, and told so
    assert elect(db, "a", None, 9.3) is None  # and does not take it back while b renews
    with db.session() as s:
        lease = repo.leader(s)
    assert (lease.holder, lease.epoch, lease.expires_at) == ("b", 2, at(9.1 + LEASE))


def test_a_restart_retakes_its_own_lease_with_a_new_epoch(db: Database) -> None:
    first = elect(db, "a", None, 0)
    again = elect(db, "a", None, 1)  # the same instance, started again: no fence in hand
    assert first is not None and again is not None and again.epoch == first.epoch + 1


def test_resigning_hands_the_lease_over_at_once(db: Database) -> None:
    a = elect(db, "a", None, 0)
    assert a is not None
    with db.session(write=True) as s:
        repo.resign(s, a)
    assert elect(db, "b", None, 0.5) == Fence("b", 2)


def test_a_deposed_leaders_writes_are_refused(db: Database) -> None:
    old = elect(db, "a", None, 0)
    assert old is not None
    ids = [submit(db), submit(db)]
    queue = DbQueue(db, old)
    (claimed,) = queue.claim(capacity=NODE, owner="a", now=at(1), lease_seconds=30, limit=1)
    new = elect(db, "b", None, 10)  # a's lease ran out
    assert new is not None and new.epoch == old.epoch + 1

    attempt = claimed.attempt.id
    refused = [
        lambda: queue.claim(capacity=NODE, owner="a", now=at(11), lease_seconds=30),
        lambda: queue.heartbeat([attempt], "a", at(11), 30),
        lambda: queue.finish(attempt, Outcome.from_exit(0), at(11), POLICY),
        lambda: queue.expire(at(11), POLICY),
        lambda: queue.abandon_owned("a", at(11), [], POLICY),
        lambda: queue.append_logs(attempt, ["late\n"], at(11)),
    ]
    for write in refused:
        with pytest.raises(Deposed, match="epoch 2"):
            write()
    with db.session() as s:
        found = [jobs_repo.get(s, job_id) for job_id in ids]
        still = jobs_repo.get_attempt(s, attempt)
    states = {j.id: j.state for j in found if j is not None}
    assert sorted(states.values()) == [JobState.QUEUED, JobState.RUNNING]  # nothing changed
    assert states[claimed.job.id] is JobState.RUNNING
    assert still is not None and still.state is AttemptState.RUNNING

    # The new leader's writes go through: it requeues the attempt once its lease ran out.
    leading = DbQueue(db, new)
    assert leading.expire(at(40), POLICY).requeued == [claimed.job.id]
    claims = leading.claim(capacity=NODE, owner="b", now=at(41), lease_seconds=30)
    assert sorted(c.job.id for c in claims) == sorted(ids)


def test_a_takeover_waits_for_a_write_in_flight(migrated_url: str, db: Database) -> None:
    """The fence check holds a share lock on the lease row to the end of the write's
    transaction: a takeover committed meanwhile waits for it, and every later write of the
    old leader is refused. (SQLite serialises writers anyway.)"""
    if not migrated_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite has one writer at a time")
    old = elect(db, "a", None, 0)
    assert old is not None
    took: list[Fence | None] = []
    with db.session(write=True) as s:
        repo.check_fence(s, old)  # a write of the old leader, in flight
        taker = threading.Thread(target=lambda: took.append(elect(db, "b", None, 10)))
        taker.start()
        taker.join(1.0)
        assert taker.is_alive() and took == []  # blocked behind the write
    taker.join(10)
    assert took == [Fence("b", 2)]
    with db.session(write=True) as s, pytest.raises(Deposed):
        repo.check_fence(s, old)
