"""What every process-based executor shares: worker groups, kills, output, orphans.

A subclass overrides one method, :meth:`ProcessExecutor._spawn` (how one worker process is
created), and :meth:`ProcessExecutor._reap` (how its end is learned). Each worker is the
leader of its own session and process group, so killing the group also kills whatever the
job spawned.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nimbus.jobs.executors.base import (
    DEFAULT_PATH,
    AttemptLaunch,
    ExitStatus,
    Handle,
    OutputPump,
    scrubbed_env,
)
from nimbus.jobs.isolation import JobUser, prepare_root, prepare_workdir, retire_workdir
from nimbus.system import free_port

log = logging.getLogger(__name__)


def killpg(pgid: int, sig: int) -> None:
    """Signal a process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def default_base_env() -> dict[str, str]:
    """The only variables a job inherits from the server: where programs are, the locale."""
    return {"PATH": os.environ.get("PATH", DEFAULT_PATH), "LANG": os.environ.get("LANG", "C.UTF-8")}


@dataclass
class Worker:
    rank: int
    pid: int  # also its process group id
    pump: OutputPump
    status: ExitStatus | None = None


@dataclass
class GroupHandle:
    """One attempt's workers."""

    attempt_id: str
    workdir: Path
    workers: list[Worker] = field(default_factory=list)
    kill_at: float | None = None  # monotonic time to escalate SIGTERM to SIGKILL
    failure: ExitStatus | None = None  # the first worker failure, the attempt's status


class ProcessExecutor:
    """Runs each worker of an attempt as a process in its own session; as ``run_as`` (see
    :mod:`nimbus.jobs.isolation`), which owns the attempt's work directory while it runs,
    when given (the server must then be root)."""

    def __init__(
        self,
        jobs_root: Path,
        *,
        base_env: Mapping[str, str] | None = None,
        grace_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        run_as: JobUser | None = None,
    ) -> None:
        self.jobs_root = Path(jobs_root)
        self.base_env = dict(base_env) if base_env is not None else default_base_env()
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.run_as = run_as
        self._handles: dict[str, GroupHandle] = {}
        if run_as is not None:
            prepare_root(self.jobs_root, run_as)

    # -- what subclasses provide ------------------------------------------------------------

    def _spawn(self, launch: AttemptLaunch, env: dict[str, str]) -> tuple[int, int]:
        """Start one worker in a new session; returns (pid, read end of its output pipe)."""
        raise NotImplementedError

    def _reap(self, worker: Worker) -> ExitStatus | None:
        """The worker's status if it ended (its group's leftovers killed first), else None."""
        raise NotImplementedError

    # -- the Executor protocol --------------------------------------------------------------

    def start(self, launch: AttemptLaunch) -> Handle:
        prepare_workdir(self.jobs_root, launch.workdir, self.run_as)
        world = launch.resources.workers
        port = free_port() if world > 1 else None
        handle = GroupHandle(launch.attempt_id, launch.workdir)
        try:
            for rank in range(world):
                env = scrubbed_env(
                    launch, base=self.base_env, rank=rank, world_size=world, master_port=port
                )
                pid, fd = self._spawn(launch, env)
                pump = OutputPump(fd, launch.output, prefix=f"[{rank}] " if world > 1 else "")
                pump.start()
                handle.workers.append(Worker(rank, pid, pump))
        except BaseException:
            for worker in handle.workers:
                killpg(worker.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            for worker in handle.workers:  # reap them, or they stay zombies
                while self._reap(worker) is None and time.monotonic() < deadline:
                    time.sleep(0.01)
            retire_workdir(launch.workdir, self.run_as)
            raise
        self._handles[launch.attempt_id] = handle
        return handle

    def poll(self, handle: Handle) -> ExitStatus | None:
        group = self._group(handle)
        for worker in group.workers:
            if worker.status is None:
                worker.status = self._reap(worker)
                if worker.status is not None and not worker.status.ok and group.failure is None:
                    group.failure = worker.status
                    self.kill(group)  # one worker failed: the rest cannot finish without it
        running = [w for w in group.workers if w.status is None]
        if running and group.kill_at is not None and self.clock() >= group.kill_at:
            for worker in running:
                killpg(worker.pid, signal.SIGKILL)
        if running:
            return None
        for worker in group.workers:
            worker.pump.join(timeout=2.0)  # output held open by an escaped process is dropped
        self._handles.pop(group.attempt_id, None)
        retire_workdir(group.workdir, self.run_as)
        return group.failure or ExitStatus(0)

    def kill(self, handle: Handle) -> None:
        group = self._group(handle)
        for worker in group.workers:
            if worker.status is None:
                killpg(worker.pid, signal.SIGTERM)
        if group.kill_at is None:
            group.kill_at = self.clock() + self.grace_seconds

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        killed = []
        for attempt_id, pids in find_attempt_processes(self.jobs_root).items():
            if attempt_id in self._handles or not should_kill(attempt_id):
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    killpg(os.getpgid(pid), signal.SIGKILL)
            killed.append(attempt_id)
        return killed

    def close(self) -> None:
        for group in list(self._handles.values()):
            for worker in group.workers:
                if worker.status is None:
                    killpg(worker.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.poll(group) is None and time.monotonic() < deadline:
                time.sleep(0.01)

    def _group(self, handle: Handle) -> GroupHandle:
        if not isinstance(handle, GroupHandle):
            raise TypeError(f"not a handle of this executor: {handle!r}")
        return handle


def find_attempt_processes(jobs_root: Path) -> dict[str, list[int]]:
    """Processes of this user whose environment says they run an attempt under ``jobs_root``
    (read from ``/proc``: what the process was started with, which a job cannot forge for
    processes it did not start)."""
    root = str(Path(jobs_root).resolve())
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        job_dir = env.get(b"NIMBUS_JOB_DIR", b"").decode(errors="replace")
        attempt = env.get(b"NIMBUS_ATTEMPT_ID", b"").decode(errors="replace")
        if attempt and (job_dir == root or job_dir.startswith(root + os.sep)):
            found.setdefault(attempt, []).append(int(entry.name))
    return found
