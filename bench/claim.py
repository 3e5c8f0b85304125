"""Claim latency with a deep queue, on SQLite and PostgreSQL (prints figures; not a test).

``python bench/claim.py [--jobs 100000] [--reps 15] [--backend sqlite|postgresql|both]
[--reserve-after SECONDS]``. The claim before this bench's change is measured with the old
sources first on the path: ``git archive 17412fc src | tar -x -C /tmp/old`` then
``PYTHONPATH=/tmp/old/src python bench/claim.py``.

Builds a metadata store with ``--jobs`` queued jobs (bulk inserts), then times
:func:`nimbus.db.jobs.claim_next` for one node, in a transaction that is rolled back each
time (so every repetition sees the same queue), and prints medians. It also reads the whole
queue and the running jobs and runs :func:`~nimbus.jobs.policy.pick` over them: ``= pick``
says whether the claim chose what the policy chooses over the whole queue.

The queues:

- ``sim``: the jobs of ``bench/schedule_sim.py`` (50 tenants, Zipf demand, its eleven shapes
  and four priorities; the claim does not see custom resources, Ray places those), all
  queued. Half of the tenants with a limit already run that many jobs on other nodes, so
  they are at their limit (their jobs are skipped); jobs using 16 CPUs run on the node
  itself.
- ``gpu-ahead``: all but 10 jobs ask for a GPU at priority 10; the last 10 need one CPU at
  priority 0. On a CPU-only node only those 10 can start.

Each queue is timed on a CPU node (32 CPUs, 128 GiB, no GPU) and a GPU node (64 CPUs,
8 GPUs, 512 GiB). PostgreSQL is a throwaway server (tests/helpers.py), on this machine.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from _common import median
from schedule_sim import GIB, T0, workload
from sqlalchemy import insert, select
from tests.helpers import PostgresServer, rolled_back

from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.tables import JobAttemptRow, JobRow, Tenant
from nimbus.jobs.capacity import Capacity, Usage
from nimbus.jobs.domain import AttemptState, JobSpec, JobState, Resources
from nimbus.jobs.policy import QueuedJob, RunningJob, pick

NODES = {
    "cpu node": Capacity(cpus=32, gpus=0, memory_bytes=128 * GIB),
    "gpu node": Capacity(cpus=64, gpus=8, memory_bytes=512 * GIB),
}
OWNER = "node-bench"
NOW = T0 + timedelta(hours=1)


@dataclass
class Queue:
    name: str
    jobs: list[QueuedJob]
    running: list[tuple[QueuedJob, str]]  # and the node it runs on
    limits: dict[int, int]


def sim_queue(n_jobs: int) -> Queue:
    w = workload(1000, n_jobs, 50, backlog=1.0, seed=1)
    rng = random.Random(2)
    jobs = [
        QueuedJob(j.id, j.tenant_id, j.priority, j.created_at, _plain(j.resources)) for j in w.jobs
    ]
    at_limit = set(sorted(w.limits)[::2])
    running: list[tuple[QueuedJob, str]] = []
    queued: list[QueuedJob] = []
    used = dict.fromkeys(w.limits, 0)
    local, half = Usage(), Capacity(cpus=16, gpus=0, memory_bytes=64 * GIB)
    for job in jobs:
        if job.tenant_id in at_limit and used[job.tenant_id] < w.limits[job.tenant_id]:
            used[job.tenant_id] += 1
            running.append((job, f"node-{rng.randrange(1000):04d}"))
        elif half.fits(job.resources, local) and job.tenant_id not in at_limit:
            local = local.plus(job.resources)  # half of a CPU node already in use
            running.append((job, OWNER))
        else:
            queued.append(job)
    return Queue("sim", queued, running, w.limits)


def gpu_ahead_queue(n_jobs: int) -> Queue:
    gpu = Resources(cpus=8, gpus=1, memory_bytes=64 * GIB)
    cpu = Resources(cpus=1, memory_bytes=2 * GIB)
    jobs = [
        QueuedJob(f"g{i:06d}", 1 + i % 50, 10, T0 + timedelta(seconds=i / 100), gpu)
        for i in range(n_jobs - 10)
    ]
    jobs += [
        QueuedJob(f"c{i:06d}", 1 + i % 50, 0, T0 + timedelta(seconds=i), cpu) for i in range(10)
    ]
    return Queue("gpu-ahead", jobs, [], {})


def _need(cpus: float, gpus: int, memory: int, workers: int) -> Resources:
    return Resources(cpus=cpus, gpus=gpus, memory_bytes=memory, workers=workers)


def _plain(need: Resources) -> Resources:
    return Resources(
        cpus=need.cpus, gpus=need.gpus, memory_bytes=need.memory_bytes, workers=need.workers
    )


def _job_row(job: QueuedJob, state: str, attempt_id: str | None) -> dict[str, Any]:
    res = job.resources
    spec = JobSpec(model="mlp", dataset="iris", resources=res, priority=job.priority)
    return {
        "id": job.id,
        "tenant_id": job.tenant_id,
        "spec": spec.to_dict(),
        "state": state,
        "priority": job.priority,
        "cpus": res.cpus,
        "gpus": res.gpus,
        "memory_bytes": res.memory_bytes,
        "workers": res.workers,
        "attempts": 1 if attempt_id else 0,
        "current_attempt_id": attempt_id,
        "max_retries": 0,
        "cancel_requested": False,
        "log_seq": 0,
        "created_at": job.created_at,
    }


def load(db: Database, queue: Queue) -> None:
    with db.session(write=True) as s:
        s.add_all([Tenant(id=t, name=f"tenant-{t}") for t in range(1, 51)])
    rows = [_job_row(job, JobState.QUEUED.value, None) for job in queue.jobs]
    rows += [_job_row(job, JobState.RUNNING.value, f"a{job.id}") for job, _ in queue.running]
    attempts = [
        {
            "id": f"a{job.id}",
            "job_id": job.id,
            "number": 1,
            "state": AttemptState.RUNNING.value,
            "lease_owner": node,
            "lease_expires_at": NOW + timedelta(hours=1),
            "started_at": NOW,
        }
        for job, node in queue.running
    ]
    with db.session(write=True) as s:
        for start in range(0, len(rows), 5000):
            s.execute(insert(JobRow), rows[start : start + 5000])
        for start in range(0, len(attempts), 5000):
            s.execute(insert(JobAttemptRow), attempts[start : start + 5000])
    if db.engine.dialect.name == "postgresql":  # fresh statistics, as autovacuum keeps
        with db.engine.connect() as conn:  # (SQLite has none unless one runs ANALYZE)
            conn.exec_driver_sql("ANALYZE")
            conn.commit()


def whole_queue_pick(
    db: Database, capacity: Capacity, limits: dict[int, int], reserve_after: timedelta | None
) -> list[str]:
    need = (JobRow.cpus, JobRow.gpus, JobRow.memory_bytes, JobRow.workers)
    with db.session() as s:
        queued = [
            QueuedJob(job_id, tenant, priority, created, _need(*res), not_before)
            for job_id, tenant, priority, created, not_before, *res in s.execute(
                select(
                    JobRow.id,
                    JobRow.tenant_id,
                    JobRow.priority,
                    JobRow.created_at,
                    JobRow.not_before,
                    *need,
                ).where(JobRow.state == JobState.QUEUED.value)
            )
        ]
        running = [
            RunningJob(job_id, tenant, _need(*res), local=owner == OWNER)
            for job_id, tenant, owner, *res in s.execute(
                select(JobRow.id, JobRow.tenant_id, JobAttemptRow.lease_owner, *need)
                .join(JobAttemptRow, JobAttemptRow.id == JobRow.current_attempt_id)
                .where(JobRow.state == JobState.RUNNING.value)
            )
        ]
    return pick(queued, running, capacity, limits, NOW, reserve_after=reserve_after)


def measure(db: Database, queue: Queue, reps: int, reserve_after: timedelta | None) -> None:
    for node, capacity in NODES.items():
        times, chosen = [], []
        for _ in range(reps):
            with rolled_back(db) as s:
                start = time.perf_counter()
                claims = repo.claim_next(
                    s,
                    capacity=capacity,
                    owner=OWNER,
                    now=NOW,
                    lease_seconds=60,
                    tenant_limit=queue.limits,
                    reserve_after=reserve_after,
                )
                times.append(time.perf_counter() - start)
                chosen = [c.job.id for c in claims]
        expected = whole_queue_pick(db, capacity, queue.limits, reserve_after)
        print(
            f"  {queue.name:9} {node}: median {median(times) * 1000:7.1f} ms "
            f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}), "
            f"started {len(chosen)}, = pick: {'yes' if chosen == expected else 'NO'} "
            f"(pick starts {len(expected)})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--reserve-after", type=float, help="seconds (default: no reservation)")
    args = parser.parse_args()
    reserve = timedelta(seconds=args.reserve_after) if args.reserve_after is not None else None
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        for make in (sim_queue, gpu_ahead_queue):
            queue = make(args.jobs)
            with tempfile.TemporaryDirectory() as tmp:
                server = None
                if backend == "sqlite":
                    url = f"sqlite:///{Path(tmp) / 'bench.db'}"
                else:
                    server = PostgresServer()
                    server.start()
                    url = server.create_database("bench")
                try:
                    db = Database(url)
                    upgrade(db.engine)
                    start = time.perf_counter()
                    load(db, queue)
                    print(
                        f"{backend}: {len(queue.jobs)} queued, {len(queue.running)} running "
                        f"(loaded in {time.perf_counter() - start:.0f} s)",
                        flush=True,
                    )
                    measure(db, queue, args.reps, reserve)
                    db.dispose()
                finally:
                    if server is not None:
                        server.stop()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
