"""What every process-based executor shares: worker groups, kills, output, orphans.

A subclass overrides one method, :meth:`ProcessExecutor._spawn` (how one worker process is
created), and :meth:`ProcessExecutor._reap` (how its end is learned). Each worker is the
leader of its own session and process group, so killing the group also kills whatever the
job spawned. With a :class:`~nimbus.jobs.sandbox.Sandbox`, each attempt also runs in a
sandbox of its own (a uid, namespaces, a cgroup): its signals go to every process of its
cgroup, and its end kills the whole cgroup, escapees included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from nimbus.jobs.domain import ExitReason
from nimbus.jobs.executors.base import (
    DEFAULT_PATH,
    AttemptLaunch,
    ExitStatus,
    Handle,
    OutputPump,
    scrubbed_env,
)
from nimbus.jobs.gpus import GpuSlots, machine_gpus
from nimbus.jobs.isolation import prepare_root, prepare_workdir
from nimbus.jobs.sandbox import (
    DISK_LIMIT_EXIT,
    AttemptSandbox,
    Sandbox,
    disk_usage,
    over_disk_limit,
)
from nimbus.system import free_port

log = logging.getLogger(__name__)
DISK_CHECK_SECONDS = 2.0


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
    sandbox: AttemptSandbox | None = None
    limit: ExitReason | None = None  # a limit this executor enforced by killing it
    checked_at: float = 0.0  # last disk usage check started (monotonic)
    usage: Future[tuple[int, int]] | None = None  # the disk usage check under way
    final_usage: Future[tuple[int, int]] | None = None  # the one after its end


class ProcessExecutor:
    """Runs each worker of an attempt as a process in its own session; in ``sandbox``
    when given (see :mod:`nimbus.jobs.sandbox`; the server must then be root), else as the
    server's own user (``job_isolation = none``)."""

    def __init__(
        self,
        jobs_root: Path,
        *,
        base_env: Mapping[str, str] | None = None,
        grace_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sandbox: Sandbox | None = None,
        gpus: GpuSlots | None = None,
    ) -> None:
        self.jobs_root = Path(jobs_root)
        # Which GPUs each attempt gets: the scheduler counted them, the workers are told.
        self.gpus = gpus if gpus is not None else GpuSlots(machine_gpus())
        self.base_env = dict(base_env) if base_env is not None else default_base_env()
        self.grace_seconds = grace_seconds
        self.clock = clock
        self.sandbox = sandbox
        self._handles: dict[str, GroupHandle] = {}
        # Walks and removals of work directories (100k files take seconds): never on the
        # caller's thread, which is the scheduler's.
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-disk")
        prepare_root(self.jobs_root, sandbox is not None)

    # -- what subclasses provide ------------------------------------------------------------

    def _spawn(
        self, launch: AttemptLaunch, env: dict[str, str], sandbox: AttemptSandbox | None
    ) -> tuple[int, int]:
        """Start one worker in a new session (in ``sandbox`` when given); returns (pid,
        read end of its output pipe)."""
        raise NotImplementedError

    def _reap(self, worker: Worker) -> ExitStatus | None:
        """The worker's status if it ended (its group's leftovers killed first), else None."""
        raise NotImplementedError

    # -- the Executor protocol --------------------------------------------------------------

    def start(self, launch: AttemptLaunch) -> Handle:
        prepare_workdir(self.jobs_root, launch.workdir, None)
        world = launch.resources.workers
        port = free_port() if world > 1 else None
        handle = GroupHandle(launch.attempt_id, launch.workdir)
        try:
            pinned = self.gpus.take(launch.attempt_id, launch.resources.gpus, world)
            if self.sandbox is not None:
                cache = launch.extra_env.get("NIMBUS_CACHE_DIR")
                handle.sandbox = self.sandbox.enter(
                    launch.attempt_id,
                    launch.workdir,
                    launch.resources,
                    tenant_id=launch.tenant_id,
                    cache_dir=Path(cache) if cache else None,
                )
            for rank in range(world):
                env = scrubbed_env(
                    launch, base=self.base_env, rank=rank, world_size=world, master_port=port
                )
                if pinned is not None:  # numbered as nvidia-smi numbers them
                    env.update(CUDA_VISIBLE_DEVICES=pinned[rank], CUDA_DEVICE_ORDER="PCI_BUS_ID")
                pid, fd = self._spawn(launch, env, handle.sandbox)
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
            if handle.sandbox is not None and self.sandbox is not None:
                self.sandbox.leave(handle.sandbox)
            self.gpus.release(launch.attempt_id)
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
        if running and self.sandbox is not None and group.limit is None:
            self._check_disk(group)
        if running and group.kill_at is not None and self.clock() >= group.kill_at:
            self._signal(group, signal.SIGKILL)
        if running:
            return None
        status = group.failure or ExitStatus(0)
        if group.sandbox is not None and self.sandbox is not None:
            limited = self._limit_hit(group, status)
            if limited is None:
                return None  # its last disk check is under way
            status = limited
            self._leave(group, status)  # kills escapees: the output pipes close
        for worker in group.workers:
            worker.pump.join(timeout=2.0)  # output held open by an escaped process is dropped
        self._handles.pop(group.attempt_id, None)
        self.gpus.release(group.attempt_id)
        if self.sandbox is not None:
            self._retire(group.workdir, failed=not status.ok)
        return status

    def _leave(self, group: GroupHandle, status: ExitStatus) -> None:
        """End the sandbox of ``group``'s attempt, which ended with ``status``."""
        assert self.sandbox is not None and group.sandbox is not None
        self.sandbox.leave(group.sandbox)

    def kill(self, handle: Handle) -> None:
        group = self._group(handle)
        self._signal(group, signal.SIGTERM)
        if group.kill_at is None:
            group.kill_at = self.clock() + self.grace_seconds

    def _check_disk(self, group: GroupHandle) -> None:
        """Every few seconds, the work directory's size (its /tmp included), measured on
        the disk thread; past the disk limit, the attempt is killed (its files are all
        below ``RLIMIT_FSIZE``, but they may be many)."""
        assert self.sandbox is not None
        if group.usage is not None and group.usage.done():
            usage, group.usage = group.usage.result(), None
            if over_disk_limit(usage, self.sandbox.settings.disk_limit_bytes):
                group.limit = ExitReason.DISK_LIMIT
                self._signal(group, signal.SIGKILL)
                return
        now = time.monotonic()
        if group.usage is None and now - group.checked_at >= DISK_CHECK_SECONDS:
            group.checked_at = now
            group.usage = self._disk.submit(disk_usage, group.workdir)

    def _limit_hit(self, group: GroupHandle, status: ExitStatus) -> ExitStatus | None:
        """The attempt's status, saying which limit ended it, if one did; None while the
        last check of its disk usage runs."""
        assert self.sandbox is not None and group.sandbox is not None
        if status.ok:
            return status
        limit = group.limit
        if limit is None and group.sandbox.oom_killed():
            limit = ExitReason.OUT_OF_MEMORY
        if limit is None and (
            status.exit_code == DISK_LIMIT_EXIT or status.signal == signal.SIGXFSZ
        ):
            limit = ExitReason.DISK_LIMIT
        if limit is None:  # what it left on disk: many files, a full /tmp, one at the limit
            if group.final_usage is None:
                group.final_usage = self._disk.submit(disk_usage, group.workdir)
            if not group.final_usage.done():
                return None
            if over_disk_limit(group.final_usage.result(), self.sandbox.settings.disk_limit_bytes):
                limit = ExitReason.DISK_LIMIT
        return status if limit is None else ExitStatus(status.exit_code, status.signal, limit)

    def _retire(self, workdir: Path, *, failed: bool) -> None:
        """Hand an ended attempt's work directory to the disk thread; a succeeded one is
        first renamed out of the way (one call), so it is gone from its place at once."""
        assert self.sandbox is not None
        target = workdir
        if not failed:
            with contextlib.suppress(OSError):
                target = workdir.rename(workdir.with_name(workdir.name + ".removed"))
        self._disk.submit(self.sandbox.retire_workdir, target, failed=failed)

    def _signal(self, group: GroupHandle, sig: int) -> None:
        """Signal the attempt: every process of its cgroup when sandboxed (the workers'
        process groups hold only the launchers there), else each worker's group."""
        cgroup = group.sandbox.cgroup if group.sandbox is not None else None
        if cgroup is None or sig == signal.SIGKILL:
            for worker in group.workers:
                if worker.status is None:
                    killpg(worker.pid, sig)
        if cgroup is None:
            return
        if sig == signal.SIGKILL:
            cgroup.kill(timeout=0)
            return
        # Not the launchers (bwrap outside the sandbox): killed, they would SIGKILL the job
        # at once (--die-with-parent) instead of letting it end within the grace period.
        launchers = {worker.pid for worker in group.workers}
        for pid in cgroup.pids() - launchers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        killed = []
        if self.sandbox is not None:
            for attempt_id in self.sandbox.leftovers():
                if attempt_id not in self._handles and should_kill(attempt_id):
                    self.sandbox.kill_leftover(attempt_id)
                    killed.append(attempt_id)
        for attempt_id, pids in find_attempt_processes(self.jobs_root).items():
            if attempt_id in self._handles or not should_kill(attempt_id):
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    killpg(os.getpgid(pid), signal.SIGKILL)
            if attempt_id not in killed:
                killed.append(attempt_id)
        return killed

    def close(self) -> None:
        for group in list(self._handles.values()):
            self._signal(group, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.poll(group) is None and time.monotonic() < deadline:
                time.sleep(0.01)
        self._disk.shutdown(wait=True)
        if self.sandbox is not None:
            self.sandbox.close()

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
