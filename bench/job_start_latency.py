"""Submit -> job-code-running latency of the executors, sandboxed and not (prints figures).

Not a test (no timed asserts): ``python bench/job_start_latency.py [ROUNDS]``, as root with
bubblewrap for the sandboxed rows (without, only the unsandboxed ones run).
``python bench/job_start_latency.py --server [ROUNDS]``: the same through two real
servers (sandboxed, the default preload), warm sandboxes on and off, from ``POST /jobs``
to the first line of a submitted script (the runtime fetched its spec and the dataset
before it): the issue's submit -> first step, at the default scheduler tick (a submit
wakes the scheduler of the server it reached).

Each job records ``time.time()`` on its first line and again once ``import torch`` is done;
the figures are those minus the time just before ``submit``. The scheduler ticks right
after the submit, so the tick interval is not counted. The executors take turns, one job
each per round (interleaved, so load on the machine hits them alike); medians over the
rounds:

- ``local``: unsandboxed, a fresh python per attempt (cold);
- ``forkserver``: unsandboxed, forked from one zygote with torch imported (warm; the
  reference of issue 8: "still <= 0.5 s median with the sandbox");
- ``sandbox-cold``: a new bubblewrap sandbox per attempt (uid, namespaces, cgroup);
- ``sandbox-warm``: a warm sandbox per attempt (:mod:`nimbus.jobs.executors.warm`),
  claimed once its replacement from the previous round is ready (steady state: the time a
  replacement takes to get ready, in the background, is printed separately).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from _common import ServerProcess
from tests.api.conftest import API, csv_bytes, make_token

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
from nimbus.jobs.executors.warm import WarmSandboxExecutor
from nimbus.jobs.isolation import resolve_isolation
from nimbus.jobs.scheduler import Scheduler, SchedulerConfig

CODE = (
    "import time, pathlib; t0 = time.time()\nimport torch\n"
    "pathlib.Path('started').write_text(f'{t0} {time.time()}')"
)
PRELOAD = ("torch",)
TENANT = 1


@dataclass
class Subject:
    """One executor under a scheduler of its own, and what was measured of it."""

    name: str
    executor: Executor
    root: Path
    first: list[float] = field(default_factory=list)  # submit -> first line, ms
    ready: list[float] = field(default_factory=list)  # submit -> torch imported, ms
    spawn: list[float] = field(default_factory=list)  # executor.start -> first line, ms

    def __post_init__(self) -> None:
        self.db = Database(f"sqlite:///{self.root / (self.name + '.db')}")
        upgrade(self.db.engine)
        with self.db.session(write=True) as s:
            s.add(Tenant(id=TENANT, name="bench"))
        self.scheduler = Scheduler(
            DbQueue(self.db),
            self.executor,
            detect_capacity(),
            "bench",
            jobs_root=self.root / self.name,
            config=SchedulerConfig(heartbeat_seconds=1),
            launch_fn=lambda job, att: Program(code=CODE),
        )
        self.starts: list[float] = []
        real_start = self.executor.start

        def timed_start(launch: AttemptLaunch) -> Handle:
            self.starts.append(time.time())
            return real_start(launch)

        self.executor.start = timed_start  # type: ignore[method-assign]

    def once(self) -> None:
        executor = self.executor
        if isinstance(executor, WarmSandboxExecutor) and not executor.wait_warm(
            TENANT, timeout=300
        ):
            raise RuntimeError("no warm sandbox became ready")
        t_submit = time.time()
        with self.db.session(write=True) as s:
            job = repo.submit(
                s,
                TENANT,
                JobSpec(model="x", resources=Resources(memory_bytes=0)),
                datetime.now(UTC),
            )
        self.scheduler.tick()
        (attempt_id,) = self.scheduler.local
        marker = self.root / self.name / job.id / attempt_id / "started"
        while not marker.exists() or not marker.read_text():
            time.sleep(0.001)
        t0, t1 = map(float, marker.read_text().split())
        self.first.append((t0 - t_submit) * 1000)
        self.spawn.append((t0 - self.starts[-1]) * 1000)
        self.ready.append((t1 - t_submit) * 1000)
        while self.scheduler.local:
            self.scheduler.tick()
            time.sleep(0.005)

    def close(self) -> None:
        self.executor.close()
        self.db.dispose()

    def line(self) -> str:
        med = statistics.median
        text = (
            f"{self.name:>13}: submit->first line {med(self.first):7.1f} ms "
            f"(min {min(self.first):6.1f}); submit->torch imported {med(self.ready):7.1f} ms "
            f"(min {min(self.ready):6.1f}); executor.start->first line {med(self.spawn):7.1f} ms"
        )
        if isinstance(self.executor, WarmSandboxExecutor):
            text += f"  [warm {self.executor.warm_starts}, cold {self.executor.cold_starts}]"
        return text


def subjects(tmp: Path) -> list[Subject]:
    found = [
        Subject("local", LocalExecutor(tmp / "local"), tmp),
        Subject("forkserver", ForkServerExecutor(tmp / "forkserver", preload=PRELOAD), tmp),
    ]
    if os.geteuid() != 0 or shutil.which("bwrap") is None:
        print("not root, or no bwrap: the sandboxed executors are left out")
        return found
    home = tmp / "home"
    home.mkdir(mode=0o711)
    isolation = resolve_isolation(
        "sandbox",
        home,
        instance=f"bench-{os.getpid()}",
        uid_first=2_000_000_000,
        uid_count=1000,
        disk_limit_bytes=2**30,
        pids_per_worker=4096,
        keep_failed_seconds=0,
    )
    if isolation.sandbox is None:
        print(f"the sandbox cannot run here: {isolation.refused}")
        return found
    sandbox = isolation.sandbox
    cold = LocalExecutor(home / "cold", sandbox=sandbox)
    warm = WarmSandboxExecutor(home / "warm", sandbox=sandbox, size=1, preload=PRELOAD)
    warm.expect(TENANT)
    started = time.perf_counter()
    warm.wait_warm(TENANT, timeout=300)
    print(f"first warm sandbox ready in {time.perf_counter() - started:.2f} s (imports torch)")
    return [*found, Subject("sandbox-cold", cold, home), Subject("sandbox-warm", warm, home)]


SCRIPT = b"""\
import os, time
print("first", time.time(), "/.warm/" in os.getcwd(), flush=True)
"""


def server_rounds(rounds: int, pause: float = 20.0) -> None:
    """Submit -> first line of a script, through real servers with warm sandboxes (2) and
    without (0), alternately; ``pause`` seconds between rounds let a replacement warm up."""
    tmp = Path(tempfile.mkdtemp(prefix="nimbus-latency-"))
    tmp.chmod(0o711)
    figures: dict[str, list[float]] = {"warm": [], "cold": []}
    warm_hits = 0
    servers = {
        name: ServerProcess(
            tmp / name,
            env={
                "NIMBUS_JOB_ISOLATION": "sandbox",
                "NIMBUS_EXECUTOR": "forkserver",
                "NIMBUS_JOB_WARM_SANDBOXES": "2" if name == "warm" else "0",
                # The default tick (0.5 s): a submit wakes the node's scheduler.
                "NIMBUS_SCHEDULER_TICK_SECONDS": "0.5",
            },
        ).start()
        for name in figures
    }
    try:
        clients = {}
        for name, server in servers.items():
            client = server.client(make_token(server, "member", "bench"))
            client.post(
                f"{API}/datasets/reviews/versions",
                params={"filename": "r.csv"},
                content=csv_bytes(),
            ).raise_for_status()
            ref = client.post(f"{API}/code", params={"filename": "j.py"}, content=SCRIPT)
            clients[name] = (client, ref.json()["ref"])
        for round_ in range(rounds + 1):  # round 0: each tenant's first job (cold)
            for name, (client, ref) in clients.items():
                t_submit = time.time()
                job = client.post(f"{API}/jobs", json={"dataset": "reviews", "model": ref})
                job_id = job.json()["id"]
                while "first" not in (text := _logs(client, API, job_id)):
                    time.sleep(0.01)
                _, at, warm = next(x for x in text.splitlines() if x.startswith("first")).split()
                if round_ > 0:
                    figures[name].append((float(at) - t_submit) * 1000)
                    warm_hits += name == "warm" and warm == "True"
            time.sleep(pause)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in figures.items()}
    print(f"servers, medians over {rounds} interleaved rounds, POST /jobs -> script's first line:")
    print(
        f"  warm sandboxes (2): {med['warm']:7.1f} ms (min {min(figures['warm']):.1f}; "
        f"{warm_hits}/{rounds} started warm)"
    )
    print(f"  cold sandboxes (0): {med['cold']:7.1f} ms (min {min(figures['cold']):.1f})")
    print(f"  cold / warm = {med['cold'] / med['warm']:.1f}")


def _logs(client: httpx.Client, api: str, job_id: str) -> str:
    page = client.get(f"{api}/jobs/{job_id}/logs").json()
    return "".join(chunk["data"] for chunk in page["chunks"])


def main(rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nimbus-latency-"))
    tmp.chmod(0o711)
    everything = subjects(tmp)
    try:
        for _ in range(rounds):
            for subject in everything:
                subject.once()
        print(f"medians over {rounds} interleaved rounds:")
        for subject in everything:
            print(subject.line())
        by = {s.name: statistics.median(s.ready) for s in everything}
        if "sandbox-warm" in by:
            warm = next(s for s in everything if s.name == "sandbox-warm")
            assert isinstance(warm.executor, WarmSandboxExecutor)
            print(
                f"submit->torch imported: sandbox-warm / forkserver = "
                f"{by['sandbox-warm'] / by['forkserver']:.2f}; sandbox-cold / sandbox-warm = "
                f"{by['sandbox-cold'] / by['sandbox-warm']:.1f}; a warm sandbox (its "
                f"replacement after each claim) got ready in "
                f"{statistics.median(warm.executor.warm_up_seconds):.2f} s (median)"
            )
    finally:
        for subject in everything:
            subject.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--server"]:
        server_rounds(int(sys.argv[2]) if len(sys.argv) > 2 else 6)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
