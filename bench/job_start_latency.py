"""Submit -> job-code-running latency of the local and fork-server executors (prints figures).

Not a test (no timed asserts): ``python bench/job_start_latency.py [N]``.
Each job records ``time.time()`` on its first line and again once ``import torch`` is done;
the figure is that minus the time just before ``submit``. The scheduler ticks right after
the submit, so the tick interval is not counted.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.queue import DbQueue
from nimbus.db.tables import Tenant
from nimbus.jobs.capacity import detect_capacity
from nimbus.jobs.domain import JobSpec, Resources
from nimbus.jobs.executors.base import AttemptLaunch, Executor, Handle, Program
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.scheduler import Scheduler, SchedulerConfig

CODE = (
    "import time, pathlib; t0 = time.time()\nimport torch\n"
    "pathlib.Path('started').write_text(f'{t0} {time.time()}')"
)


def measure(name: str, executor: Executor, root: Path, n: int) -> None:
    db = Database(f"sqlite:///{root / (name + '.db')}")
    upgrade(db.engine)
    with db.session(write=True) as s:
        s.add(Tenant(id=1, name="bench"))
    scheduler = Scheduler(
        DbQueue(db),
        executor,
        detect_capacity(),
        "bench",
        jobs_root=root / name,
        config=SchedulerConfig(heartbeat_seconds=1),
        launch_fn=lambda job, att: Program(code=CODE),
    )
    first, ready, spawn = [], [], []
    starts: list[float] = []
    real_start = executor.start

    def timed_start(launch: AttemptLaunch) -> Handle:
        starts.append(time.time())
        return real_start(launch)

    executor.start = timed_start  # type: ignore[method-assign]
    for _ in range(n):
        t_submit = time.time()
        with db.session(write=True) as s:
            job = repo.submit(
                s, 1, JobSpec(model="x", resources=Resources(memory_bytes=0)), datetime.now(UTC)
            )
        scheduler.tick()
        (attempt_id,) = scheduler.local
        marker = root / name / job.id / attempt_id / "started"
        while not marker.exists() or not marker.read_text():
            time.sleep(0.001)
        t0, t1 = map(float, marker.read_text().split())
        first.append((t0 - t_submit) * 1000)
        spawn.append((t0 - starts[-1]) * 1000)
        ready.append((t1 - t_submit) * 1000)
        while scheduler.local:
            scheduler.tick()
            time.sleep(0.005)
    executor.close()
    db.dispose()
    print(
        f"{name:>10}: submit->first line median {statistics.median(first):7.1f} ms "
        f"(min {min(first):.1f}); submit->torch imported median "
        f"{statistics.median(ready):7.1f} ms (min {min(ready):.1f}); executor.start->first "
        f"line median {statistics.median(spawn):.1f} ms  [n={n}]"
    )


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    tmp = Path(tempfile.mkdtemp(prefix="nimbus-latency-"))
    measure("local", LocalExecutor(tmp / "local"), tmp, count)
    started = time.perf_counter()
    forkserver = ForkServerExecutor(tmp / "forkserver", preload=["torch"])
    print(f"fork server ready in {time.perf_counter() - started:.2f} s (imports torch once)")
    measure("forkserver", forkserver, tmp, count)
