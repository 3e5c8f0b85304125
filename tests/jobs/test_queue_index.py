"""The indexed policy (QueueIndex, behind pick) decides exactly as the plain walk, over random
small cases: one-off calls, and one index kept across arrivals, starts, ends and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nimbus.jobs.capacity import Capacity, Usage
from nimbus.jobs.domain import Resources
from nimbus.jobs.policy import QueuedJob, RunningJob, pick
from nimbus.jobs.queue_index import QueueIndex
from tests.jobs.helpers_policy import pick_reference

T0 = datetime(2030, 1, 1, tzinfo=UTC)
GIB = 1 << 30

resources = st.builds(
    Resources,
    cpus=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    gpus=st.sampled_from([0, 0, 1, 2]),
    memory_bytes=st.sampled_from([GIB, 2 * GIB, 4 * GIB]),
    workers=st.sampled_from([1, 1, 2]),
    custom=st.sampled_from([{}, {}, {"acc": 1.0}, {"acc": 2.0}, {"lic": 0.5}]),
)
capacities = st.builds(
    Capacity,
    cpus=st.sampled_from([2.0, 4.0, 8.0]),
    gpus=st.sampled_from([0, 1, 2, 4]),
    memory_bytes=st.sampled_from([4 * GIB, 16 * GIB]),
    custom=st.sampled_from([{}, {"acc": 2.0}, {"acc": 4.0, "lic": 1.0}]),
)
tenant_limits = st.one_of(
    st.none(),
    st.integers(0, 4),
    st.dictionaries(st.integers(1, 4), st.integers(0, 3), max_size=4),
)
reserves = st.sampled_from([None, timedelta(seconds=0), timedelta(seconds=5)])


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


@st.composite
def queued_jobs(draw: st.DrawFn, ids: list[str]) -> list[QueuedJob]:
    jobs = []
    for job_id in ids:
        delay = draw(st.sampled_from([None, None, 0, 3, 8]))
        created = draw(st.integers(0, 10))
        jobs.append(
            QueuedJob(
                job_id,
                draw(st.integers(1, 4)),
                draw(st.sampled_from([0, 0, 5, -1])),
                at(created),
                draw(resources),
                at(created + delay) if delay is not None else None,
            )
        )
    return jobs


@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 25),
    capacity=capacities,
    tenant_limit=tenant_limits,
    reserve_after=reserves,
    now=st.integers(0, 20),
)
def test_pick_matches_the_plain_walk(
    data: st.DataObject,
    n: int,
    capacity: Capacity,
    tenant_limit: int | dict[int, int] | None,
    reserve_after: timedelta | None,
    now: int,
) -> None:
    queued = data.draw(queued_jobs([f"j{i}" for i in range(n)]))
    running = [
        RunningJob(
            f"r{i}", data.draw(st.integers(1, 4)), data.draw(resources), data.draw(st.booleans())
        )
        for i in range(data.draw(st.integers(0, 4)))
    ]
    args = (queued, running, capacity, tenant_limit, at(now))
    expected = pick_reference(*args, reserve_after=reserve_after)
    assert pick(*args, reserve_after=reserve_after) == expected


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    nodes=st.lists(capacities, min_size=1, max_size=3),
    tenant_limit=tenant_limits,
    reserve_after=reserves,
)
def test_one_index_kept_over_time_matches_the_plain_walk(
    data: st.DataObject,
    nodes: list[Capacity],
    tenant_limit: int | dict[int, int] | None,
    reserve_after: timedelta | None,
) -> None:
    index = QueueIndex(reserve_after)
    queued: dict[str, QueuedJob] = {}
    running: dict[str, tuple[int, RunningJob]] = {}  # job id -> (node, job)
    now, serial = 0, 0
    for _ in range(data.draw(st.integers(1, 30))):
        op = data.draw(st.sampled_from(["add", "add", "take", "take", "end", "cancel", "wait"]))
        if op == "add":
            delay = data.draw(st.sampled_from([None, None, 0, 3]))
            job = QueuedJob(
                f"j{serial}",
                data.draw(st.integers(1, 4)),
                data.draw(st.sampled_from([0, 0, 5, -1])),
                at(now),
                data.draw(resources),
                at(now + delay) if delay is not None else None,
            )
            index.add(job)
            queued[job.id] = job
            serial += 1
        elif op == "take":
            node = data.draw(st.integers(0, len(nodes) - 1))
            runs = [
                RunningJob(r.id, r.tenant_id, r.resources, n == node) for n, r in running.values()
            ]
            expected = pick_reference(
                list(queued.values()),
                runs,
                nodes[node],
                tenant_limit,
                at(now),
                reserve_after=reserve_after,
            )
            used = Usage()
            for run in runs:
                if run.local:
                    used = used.plus(run.resources)
            per_tenant: dict[int, int] = {}
            for run in runs:
                per_tenant[run.tenant_id] = per_tenant.get(run.tenant_id, 0) + 1
            assert index.take(nodes[node], used, per_tenant, tenant_limit, at(now)) == expected
            for job_id in expected:
                job = queued.pop(job_id)
                running[job_id] = (node, RunningJob(job_id, job.tenant_id, job.resources))
        elif op == "end" and running:
            job_id = data.draw(st.sampled_from(sorted(running)))
            _, run = running.pop(job_id)
            if data.draw(st.booleans()):  # the attempt failed: back in the queue with backoff
                old = queued[job_id] = QueuedJob(
                    job_id, run.tenant_id, 0, at(0), run.resources, at(now + 4)
                )
                index.add(old)
        elif op == "cancel" and queued:
            job_id = data.draw(st.sampled_from(sorted(queued)))
            assert index.remove(job_id) == queued.pop(job_id)
        elif op == "wait":
            now += data.draw(st.integers(1, 6))
    assert len(index) == len(queued) and all(job_id in index for job_id in queued)


def test_time_does_not_go_back_and_a_job_is_queued_once() -> None:
    index = QueueIndex()
    job = QueuedJob("a", 1, 0, T0, Resources())
    index.add(job)
    with pytest.raises(ValueError, match="already queued"):
        index.add(job)
    node = Capacity(cpus=1, gpus=0, memory_bytes=1 << 40)
    assert index.take(node, Usage(), {}, None, at(5)) == ["a"]
    assert "a" not in index and len(index) == 0
    with pytest.raises(ValueError, match="time went back"):
        index.take(node, Usage(), {}, None, at(4))
