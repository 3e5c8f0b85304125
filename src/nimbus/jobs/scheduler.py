"""The scheduler loop: effects only. Decisions come from :mod:`.policy`, applied by the
queue (a :class:`~.queue.JobQueue`); processes come from an
:class:`~.executors.base.Executor`.

Wiring (the control plane does this once, in :mod:`nimbus.server`)::

    scheduler = Scheduler(DbQueue(db), executor, capacity, "node-1",
                          jobs_root=settings.jobs_dir,
                          config=SchedulerConfig(nimbus_url=own_url))
    stop = threading.Event()
    threading.Thread(target=scheduler.run, args=(stop,), daemon=True).start()

:meth:`Scheduler.run` is the one loop: it recovers what an earlier run of this node left
(:meth:`~Scheduler.recover`), calls ``on_ready`` (the control plane warms its executor
there), then ticks until ``stop`` is set. Each :meth:`Scheduler.tick` requeues attempts whose
lease ran out, fails jobs past their deadline, renews the leases of the attempts it runs
(and kills those that were cancelled or taken from it), collects ended attempts, then
claims and starts new ones. Leaving the loop leaves running attempts alone: the next start
of the same node recovers them; :meth:`~Scheduler.shutdown` kills and requeues them instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Attempt, AttemptState, Claim, Deposed, Fenced, Job
from nimbus.jobs.executors.base import AttemptLaunch, Executor, Handle, OutputSink, Program
from nimbus.jobs.isolation import prepare_workdir
from nimbus.jobs.policy import Decision, Outcome, RetryPolicy
from nimbus.jobs.queue import JobQueue

log = logging.getLogger(__name__)

RUNTIME_ENTRY = "nimbus.runtime.entry"
LaunchFn = Callable[[Job, Attempt], Program]


QUICK_SECONDS = 0.05  # between ticks while a killed attempt is ending (see Scheduler._pause)
QUICK_WINDOW_SECONDS = 1.0  # for so long after the kill at most (a job may take its grace)


def affinity(job: Job, program: Program) -> str | None:
    """Which of the attempts of this job and others may run one after another in one sandbox
    (:mod:`nimbus.jobs.executors.warm`): those submitted with the same token, in the same
    tenant, running the same code (a built-in model, or a script named by its content hash)
    on the same dataset version with the same requirements and resources. Their parameters
    may differ (a study's trials). None for a job without its submitter's token."""
    if job.created_by is None:
        return None
    spec, r = job.spec, job.resources
    same = [
        job.tenant_id,
        job.created_by,
        spec.model,
        spec.dataset,
        list(spec.requirements),
        list(job.environment_lock),
        [r.cpus, r.gpus, r.memory_bytes, r.workers, sorted(r.custom.items()), r.spread],
        [program.module, program.code, list(program.args)],
    ]
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()


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
    reserve_after_seconds: float | None = None  # see policy.pick: starvation bound
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
    """Claims jobs from ``queue`` for this node and runs their attempts on ``executor``,
    within ``capacity`` (a callable: asked at every claim, as a cluster's changes)."""

    def __init__(
        self,
        queue: JobQueue,
        executor: Executor,
        capacity: Capacity | Callable[[], Capacity],
        instance_id: str,
        *,
        jobs_root: Path,
        config: SchedulerConfig = SchedulerConfig(),
        clock: Callable[[], float] = time.time,
        launch_fn: LaunchFn = runtime_program,
        on_finished: Callable[[], object] | None = None,
    ) -> None:
        self.queue, self.executor, self.capacity = queue, executor, capacity
        self.instance_id, self.jobs_root, self.config = instance_id, Path(jobs_root), config
        self.clock, self.launch_fn = clock, launch_fn
        # Called after a tick recorded the end of attempts (a study's next trial is asked
        # for at once rather than at its loop's next round).
        self.on_finished = on_finished
        self.local: dict[str, _Local] = {}  # attempt id -> what runs here
        self._last_heartbeat = float("-inf")
        self._wake = threading.Event()
        self._quick_until = 0.0  # self.clock(): until then, ticks come every QUICK_SECONDS

    def wake(self) -> None:
        """Tick now rather than at the next interval (a job was just queued, or the loop
        should see that it is stopping). Safe from any thread."""
        self._wake.set()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def tick(self) -> TickReport:
        report = TickReport()
        now, policy = self.now(), self.config.retry
        expired = self.queue.expire(now, policy)
        report.requeued, report.deadline_failed = expired.requeued, expired.deadline_failed
        report.killed = self._watch_local()
        if report.killed:  # told to stop, they end within moments: their slots free soon
            self._quick_until = self.clock() + QUICK_WINDOW_SECONDS
        report.finished = self._collect()
        if report.finished and self.on_finished is not None:
            self.on_finished()
        report.started = self._claim_and_start()
        return report

    def _pause(self) -> float:
        """Until the next tick: ``tick_seconds``, or :data:`QUICK_SECONDS` for a moment after
        attempts were killed while one of them still runs, so that the slot it frees (a
        study's pruned trial: the next trial waits for it) is seen free at once, not at
        the next tick."""
        killing = any(running.killing for running in self.local.values())
        if killing and self.clock() < self._quick_until:
            return min(QUICK_SECONDS, self.config.tick_seconds)
        return self.config.tick_seconds

    def _watch_local(self) -> list[str]:
        """Renew leases when due; kill attempts cancelled or no longer ours."""
        if not self.local:
            return []
        ids = list(self.local)
        due = self.clock() - self._last_heartbeat >= self.config.heartbeat_seconds
        if due:
            leases = self.queue.heartbeat(
                ids, self.instance_id, self.now(), self.config.lease_seconds
            )
            status = {
                aid: lease.cancel_requested if lease else None for aid, lease in leases.items()
            }
            self._last_heartbeat = self.clock()
        else:
            status = self.queue.running_status(ids)
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
            return self.queue.finish(attempt_id, outcome, self.now(), self.config.retry)
        except Fenced:
            return None  # the job already moved on (deadline, lost lease): nothing to record

    def _claim_and_start(self) -> list[str]:
        cfg = self.config
        reserve = (
            timedelta(seconds=cfg.reserve_after_seconds)
            if cfg.reserve_after_seconds is not None
            else None
        )
        claims = self.queue.claim(
            capacity=self.capacity() if callable(self.capacity) else self.capacity,
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
        program = self.launch_fn(job, attempt)
        return AttemptLaunch(
            job_id=job.id,
            attempt_id=attempt.id,
            attempt_number=attempt.number,
            token=claim.token,
            program=program,
            workdir=workdir,
            nimbus_url=self.config.nimbus_url,
            resources=job.resources,
            output=self._log_sink(attempt.id),
            tenant_id=job.tenant_id,
            placed=functools.partial(self.queue.record_worker, attempt.id),
            requirements=job.spec.requirements,
            lock=job.environment_lock,
            locked=functools.partial(self.queue.record_lock, job.id),
            affinity=affinity(job, program),
        )

    def _log_sink(self, attempt_id: str) -> OutputSink:
        def append(data: str) -> None:
            self.queue.append_logs(attempt_id, [data], self.now())

        return append

    def recover(self) -> list[str]:
        """At start: kill processes an earlier run of this node left behind, and give up
        (as lost) the attempts leased to this instance that it does not run."""

        def orphaned(attempt_id: str) -> bool:
            attempt = self.queue.get_attempt(attempt_id)
            return (
                attempt is None
                or attempt.state is not AttemptState.RUNNING
                or attempt.lease_owner == self.instance_id
            )

        killed = self.executor.reap_orphans(orphaned)
        lost = self.queue.abandon_owned(
            self.instance_id, self.now(), list(self.local), self.config.retry
        )
        return killed + lost

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

    def run(self, stop: threading.Event, on_ready: Callable[[], object] | None = None) -> None:
        """The scheduler loop: :meth:`recover`, call ``on_ready``, then :meth:`tick` every
        ``tick_seconds`` (or at once when :meth:`wake` is called) until ``stop`` is set;
        whoever sets ``stop`` calls :meth:`wake` for the loop to end at once. A failing
        recovery or tick is logged, and the loop goes on.

        Returning leaves the attempts running here alone, as a crash would: the next start
        of this node kills what is left of them and requeues their jobs (:meth:`recover`),
        and fencing makes every job end exactly once. Call :meth:`shutdown` after it to kill
        and requeue them now instead.
        """
        try:
            gone = self.recover()
            if gone:
                log.info("recovered after a restart: gave up %s", ", ".join(sorted(set(gone))))
        except Exception:
            log.exception("scheduler recovery failed")
        if on_ready is not None:
            on_ready()
        log.info("scheduler %s running", self.instance_id)
        while not stop.is_set():
            try:
                self.tick()
            except Deposed as exc:
                # Another control plane leads: every write of this one is refused from now
                # on. Its election ends the term (and kills what runs here).
                log.warning("scheduler loop ends: %s", exc)
                return
            except Exception:
                log.exception("scheduler tick failed")
            if not stop.is_set():
                self._wake.wait(self._pause())
                self._wake.clear()
