"""The scheduler loop: effects only. Decisions come from :mod:`.scheduling` through the
repository (:mod:`nimbus.db.jobs`); processes come from an :class:`~.executor.Executor`.

Wiring (the server does this once)::

    executor = LocalExecutor(settings.home / "jobs")
    scheduler = Scheduler(db, executor, detect_capacity(), instance_id="node-1",
                          jobs_root=settings.home / "jobs",
                          config=SchedulerConfig(nimbus_url=settings.url))
    threading.Thread(target=scheduler.run_forever, args=(stop,), daemon=True).start()

Each :meth:`Scheduler.tick` requeues attempts whose lease ran out, fails jobs past their
deadline, renews the leases of the attempts it runs (and kills those that were cancelled or
taken from it), collects ended attempts, then claims and starts new ones.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Attempt, AttemptState, Claim, Fenced, Job
from nimbus.jobs.executors.base import AttemptLaunch, Executor, Handle, OutputSink, Program
from nimbus.jobs.isolation import prepare_workdir
from nimbus.jobs.policy import Decision, Outcome, RetryPolicy

log = logging.getLogger(__name__)

RUNTIME_ENTRY = "nimbus.runtime.entry"
LaunchFn = Callable[[Job, Attempt], Program]


def runtime_program(job: Job, attempt: Attempt) -> Program:
    """The default program of an attempt: the Nimbus runtime, which reads the job itself."""
    return Program(module=RUNTIME_ENTRY)


@dataclass(frozen=True)
class SchedulerConfig:
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 10.0  # renew leases this often (well under lease_seconds)
    tick_seconds: float = 0.5
    tenant_limit: int | None = None  # running jobs per tenant, across every scheduler
    max_starts_per_tick: int | None = None
    reserve_after_seconds: float | None = None  # see scheduling.pick: starvation bound
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    nimbus_url: str = "http://127.0.0.1:8600"


@dataclass
class _Local:
    job_id: str
    handle: Handle
    killing: bool = False


@dataclass
class TickReport:
    """What one tick did (for tests and logs)."""

    requeued: list[str] = field(default_factory=list)  # job ids whose lease had expired
    deadline_failed: list[str] = field(default_factory=list)  # job ids
    killed: list[str] = field(default_factory=list)  # attempt ids
    finished: dict[str, Decision | None] = field(default_factory=dict)  # None: fenced
    started: list[str] = field(default_factory=list)  # attempt ids


class Scheduler:
    """Claims jobs for this node and runs their attempts on ``executor``."""

    def __init__(
        self,
        db: Database,
        executor: Executor,
        capacity: Capacity,
        instance_id: str,
        *,
        jobs_root: Path,
        config: SchedulerConfig = SchedulerConfig(),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        launch_fn: LaunchFn = runtime_program,
    ) -> None:
        self.db, self.executor, self.capacity = db, executor, capacity
        self.instance_id, self.jobs_root, self.config = instance_id, Path(jobs_root), config
        self.clock, self.sleep, self.launch_fn = clock, sleep, launch_fn
        self.local: dict[str, _Local] = {}  # attempt id -> what runs here
        self._last_heartbeat = float("-inf")

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def tick(self) -> TickReport:
        report = TickReport()
        now, policy = self.now(), self.config.retry
        with self.db.session(write=True) as s:
            report.requeued = [job_id for job_id, _ in repo.requeue_expired(s, now, policy)]
            report.deadline_failed = repo.expire_deadlines(s, now)
        report.killed = self._watch_local()
        report.finished = self._collect()
        report.started = self._claim_and_start()
        return report

    def _watch_local(self) -> list[str]:
        """Renew leases when due; kill attempts cancelled or no longer ours."""
        if not self.local:
            return []
        ids = list(self.local)
        due = self.clock() - self._last_heartbeat >= self.config.heartbeat_seconds
        with self.db.session(write=due) as s:
            if due:
                leases = repo.heartbeat_many(
                    s, ids, self.instance_id, self.now(), self.config.lease_seconds
                )
                status = {
                    aid: lease.cancel_requested if lease else None for aid, lease in leases.items()
                }
                self._last_heartbeat = self.clock()
            else:
                status = repo.running_status(s, ids)
        killed = []
        for attempt_id, cancel in status.items():
            running = self.local[attempt_id]
            if (cancel is None or cancel) and not running.killing:
                log.info(
                    "killing attempt %s (%s)",
                    attempt_id,
                    "cancelled" if cancel else "no longer running",
                )
                self.executor.kill(running.handle)
                running.killing = True
                killed.append(attempt_id)
        return killed

    def _collect(self) -> dict[str, Decision | None]:
        finished: dict[str, Decision | None] = {}
        for attempt_id, running in list(self.local.items()):
            status = self.executor.poll(running.handle)
            if status is not None:
                del self.local[attempt_id]
                finished[attempt_id] = self._finish(attempt_id, status.outcome())
        return finished

    def _finish(self, attempt_id: str, outcome: Outcome) -> Decision | None:
        try:
            with self.db.session(write=True) as s:
                return repo.finish_attempt(s, attempt_id, outcome, self.now(), self.config.retry)
        except Fenced:
            return None  # the job already moved on (deadline, lost lease): nothing to record

    def _claim_and_start(self) -> list[str]:
        cfg = self.config
        reserve = (
            timedelta(seconds=cfg.reserve_after_seconds)
            if cfg.reserve_after_seconds is not None
            else None
        )
        with self.db.session(write=True) as s:
            claims = repo.claim_next(
                s,
                capacity=self.capacity,
                owner=self.instance_id,
                now=self.now(),
                lease_seconds=cfg.lease_seconds,
                tenant_limit=cfg.tenant_limit,
                limit=cfg.max_starts_per_tick,
                reserve_after=reserve,
            )
        started = []
        for claim in claims:
            try:
                handle = self.executor.start(self._launch(claim))
            except Exception as exc:
                log.exception("could not start attempt %s", claim.attempt.id)
                self._finish(claim.attempt.id, Outcome.infra(f"could not start: {exc}"))
                continue
            self.local[claim.attempt.id] = _Local(claim.job.id, handle)
            started.append(claim.attempt.id)
        return started

    def _launch(self, claim: Claim) -> AttemptLaunch:
        job, attempt = claim.job, claim.attempt
        workdir = self.jobs_root / job.id / attempt.id
        prepare_workdir(self.jobs_root, workdir, None)  # the executor hands it to the job user
        described = {
            "job_id": job.id,
            "attempt_id": attempt.id,
            "attempt_number": attempt.number,
            "spec": job.spec.to_dict(),
        }
        (workdir / "job.json").write_text(json.dumps(described, indent=1))
        return AttemptLaunch(
            job_id=job.id,
            attempt_id=attempt.id,
            attempt_number=attempt.number,
            token=claim.token,
            program=self.launch_fn(job, attempt),
            workdir=workdir,
            nimbus_url=self.config.nimbus_url,
            resources=job.resources,
            output=self._log_sink(attempt.id),
            tenant_id=job.tenant_id,
        )

    def _log_sink(self, attempt_id: str) -> OutputSink:
        def append(data: str) -> None:
            with self.db.session(write=True) as s:
                repo.append_logs(s, attempt_id, [data], self.now())

        return append

    def recover(self) -> list[str]:
        """At start: kill processes an earlier run of this node left behind, and give up
        (as lost) the attempts leased to this instance that it does not run."""

        def orphaned(attempt_id: str) -> bool:
            with self.db.session() as s:
                attempt = repo.get_attempt(s, attempt_id)
            return (
                attempt is None
                or attempt.state is not AttemptState.RUNNING
                or attempt.lease_owner == self.instance_id
            )

        killed = self.executor.reap_orphans(orphaned)
        with self.db.session(write=True) as s:
            lost = repo.abandon_owned(
                s, self.instance_id, self.now(), keep=list(self.local), policy=self.config.retry
            )
        return killed + [job_id for job_id, _ in lost]

    def shutdown(self, timeout: float = 15.0) -> None:
        """Kill the attempts running here and requeue their jobs (an infrastructure end)."""
        for running in self.local.values():
            self.executor.kill(running.handle)
        deadline = time.monotonic() + timeout
        while self.local and time.monotonic() < deadline:
            for attempt_id, running in list(self.local.items()):
                if self.executor.poll(running.handle) is not None:
                    del self.local[attempt_id]
                    self._finish(attempt_id, Outcome.infra("the scheduler stopped"))
            time.sleep(0.02)

    def run_forever(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then shut down. A failing tick is logged and retried."""
        self.recover()
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed")
            if self.sleep is not None:
                self.sleep(self.config.tick_seconds)
            else:
                stop.wait(self.config.tick_seconds)
        self.shutdown()
