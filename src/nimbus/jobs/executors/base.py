"""The executor interface: where attempts run. The implementations live beside it, one
module each (:mod:`.local`, :mod:`.forkserver`), picked by name in
:func:`nimbus.jobs.executors.make_executor`.

An executor starts an attempt's processes, says when they are done and kills them; it
knows nothing of the metadata store. Its output goes to a callback given with the launch.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from nimbus.jobs.domain import ExitReason, Resources
from nimbus.jobs.policy import Outcome

OutputSink = Callable[[str], None]
"""Receives batches of an attempt's output (stdout and stderr, whole lines where possible)."""
PlacementSink = Callable[[int, str, str], None]
"""Told where a worker of an attempt was placed: (rank, node id, node address)."""
LockSink = Callable[[tuple[str, ...]], None]
"""Told the lock a job's requirements resolved to (kept with the job for its retries)."""

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Sandboxed jobs run as uids no passwd file lists: getpass.getuser() (torch asks it for its
# compile caches' paths; torch 2.11's import of torch._dynamo then failed) reads these first
# rather than look the uid up and fail.
JOB_USER = {"USER": "nimbus-job", "LOGNAME": "nimbus-job"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Program:
    """What an attempt runs: a module (``python -m``) or inline code (``python -c``)."""

    module: str | None = None
    code: str | None = None
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.module is None) == (self.code is None):
            raise ValueError("a program is a module or inline code, not both or neither")

    def argv(self, python: str) -> list[str]:
        head = ["-m", self.module] if self.module is not None else ["-c", str(self.code)]
        return [python, *head, *self.args]


@dataclass(frozen=True)
class AttemptLaunch:
    """Everything an executor needs to start one attempt."""

    job_id: str
    attempt_id: str
    attempt_number: int
    token: str  # the job-scoped token; the only credential the job gets
    program: Program
    workdir: Path
    nimbus_url: str
    resources: Resources = field(default_factory=Resources)
    extra_env: Mapping[str, str] = field(default_factory=dict)  # set by the caller, not copied
    output: OutputSink | None = None
    tenant_id: int | None = None  # whose job: picks the tenant's download cache
    placed: PlacementSink | None = None  # executors that place workers on nodes call it
    requirements: tuple[str, ...] = ()  # the job's environment (nimbus.jobs.environments)
    lock: tuple[str, ...] = ()  # their pins, once resolved (an earlier attempt's: reused)
    locked: LockSink | None = None  # records the lock with the job, once resolved
    # Attempts of equal affinity may run one after another in one sandbox (see
    # nimbus.jobs.executors.warm): set by the scheduler (nimbus.jobs.scheduler.affinity).
    affinity: str | None = None


@dataclass(frozen=True)
class ExitStatus:
    """How the attempt's processes ended: an exit code, or the signal that killed one."""

    exit_code: int | None
    signal: int | None = None
    # A limit of the sandbox ended it (out of memory, disk), or LOST: its node died.
    limit: ExitReason | None = None
    detail: str = ""  # why, where the limit's name is not all (a failed environment build)

    @classmethod
    def from_returncode(cls, code: int) -> ExitStatus:
        """From ``Popen.returncode`` (negative: killed by that signal)."""
        return cls(None, -code) if code < 0 else cls(code)

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        """From an ``os.waitpid`` status word."""
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.WEXITSTATUS(status))

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def outcome(self) -> Outcome:
        if self.limit is ExitReason.OUT_OF_MEMORY:
            return Outcome(
                self.limit,
                self.exit_code,
                self.signal,
                "out of memory: killed at its --memory limit",
            )
        if self.limit is ExitReason.LOST:
            return Outcome(ExitReason.LOST, detail="lost: its node or worker died")
        if self.limit is ExitReason.ENVIRONMENT_BUILD_FAILED:
            return Outcome(self.limit, detail=f"{self.limit.value}: {self.detail}")
        if self.limit is ExitReason.INFRA:
            return Outcome.infra(self.detail)
        if self.limit is ExitReason.DISK_LIMIT:
            return Outcome(
                self.limit,
                self.exit_code,
                self.signal,
                "disk limit: killed for writing past it (NIMBUS_JOB_DISK_LIMIT)",
            )
        return Outcome.from_exit(self.exit_code, self.signal)


class Handle(Protocol):
    """An executor's token for a started attempt."""

    @property
    def attempt_id(self) -> str: ...


class Executor(Protocol):
    """Starts attempts, reports their end, kills them. Methods never block for long."""

    def start(self, launch: AttemptLaunch) -> Handle:
        """Start the attempt's processes (``resources.workers`` of them); raises on failure."""

    def poll(self, handle: Handle) -> ExitStatus | None:
        """None while running; the final status once every process ended and its output
        was delivered. Also escalates a kill to SIGKILL once the grace period is over."""

    def kill(self, handle: Handle) -> None:
        """SIGTERM the attempt's process groups now, SIGKILL them after the grace period."""

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        """Kill processes a previous run of this node left behind, for the attempt ids
        ``should_kill`` approves (attempts this executor runs now are never offered);
        returns the attempt ids killed."""

    def close(self) -> None:
        """Kill whatever still runs and release the executor's resources."""


def scrubbed_env(
    launch: AttemptLaunch,
    *,
    base: Mapping[str, str],
    rank: int = 0,
    world_size: int = 1,
    master_port: int | None = None,
) -> dict[str, str]:
    """The job's whole environment, built from nothing: never a copy of the server's.

    ``base`` holds the few harmless variables taken from the server (PATH, LANG).
    """
    env = {
        "PATH": base.get("PATH", DEFAULT_PATH),
        "LANG": base.get("LANG", "C.UTF-8"),
        "HOME": str(launch.workdir),
        "TMPDIR": str(launch.workdir),
        **JOB_USER,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": str(max(1, int(launch.resources.cpus))),
        "NIMBUS_URL": launch.nimbus_url,
        "NIMBUS_JOB_ID": launch.job_id,
        "NIMBUS_ATTEMPT_ID": launch.attempt_id,
        "NIMBUS_ATTEMPT_NUMBER": str(launch.attempt_number),
        "NIMBUS_JOB_TOKEN": launch.token,
        "NIMBUS_JOB_DIR": str(launch.workdir),
    }
    if launch.resources.gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""  # asked for no GPU: must not grab one
    if world_size > 1:
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world_size),
            LOCAL_WORLD_SIZE=str(world_size),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(master_port),
        )
    env.update(launch.extra_env)
    return env


class OutputPump(threading.Thread):
    """Reads a pipe until EOF and hands batches of lines to a sink every ``interval`` seconds.

    A failing sink loses that batch, never the pump.
    """

    def __init__(
        self,
        fd: int,
        sink: OutputSink | None,
        *,
        prefix: str = "",
        interval: float = 0.2,
        max_bytes: int = 64 * 1024,
    ) -> None:
        super().__init__(name=f"output-pump-{fd}", daemon=True)
        self.fd, self.sink, self.prefix = fd, sink, prefix
        self.interval, self.max_bytes = interval, max_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def run(self) -> None:
        pending: list[str] = []
        partial = ""
        last_flush = time.monotonic()
        poller = select.poll()  # not select.select: a busy server may hold fds past 1024
        poller.register(self.fd, select.POLLIN)
        try:
            while True:
                ready = poller.poll(self.interval * 1000)
                data = os.read(self.fd, 65536) if ready else b""
                if ready and not data:
                    break
                text = partial + self._decoder.decode(data)
                lines = text.splitlines(keepends=True)
                partial = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) else ""
                if len(partial) > self.max_bytes:
                    lines.append(partial)
                    partial = ""
                pending.extend(self.prefix + line for line in lines)
                now = time.monotonic()
                if pending and now - last_flush >= self.interval:
                    self._emit(pending)
                    pending, last_flush = [], now
        finally:
            tail = partial + self._decoder.decode(b"", final=True)
            if tail:
                pending.append(self.prefix + tail)
            self._emit(pending)
            os.close(self.fd)

    def _emit(self, lines: list[str]) -> None:
        if not lines or self.sink is None:
            return
        try:
            self.sink("".join(lines))
        except Exception:  # the job's output is best effort; the job itself goes on
            log.exception("lost %d lines of job output", len(lines))
