"""Attempts with an environment (``--requirements``): resolved, built, then started.

:class:`EnvironmentExecutor` wraps the node's executor. An attempt without requirements
goes straight to it. Otherwise, off the scheduler's thread (the attempt waits in poll(),
running and leased):

1. **The lock.** The job's recorded lock when an earlier attempt resolved it (a retry
   installs exactly that); else the lock this node resolved the same list to within the
   TTL (no resolve: :class:`~nimbus.jobs.envlock.ResolvedLocks`); else a resolve
   (:meth:`~nimbus.jobs.environments.Builds.resolve`, in the sandbox as a job uid). A new
   lock is recorded with the job (``launch.locked``).
2. **The environment**, named by the lock's hash with the node's platform: started at
   once when built, with ``NIMBUS_JOB_ENV`` naming it (the runtime adds it to
   ``sys.path``; warm sandboxes and the fork server too, so a cached environment starts
   as warm as the base); otherwise built from the lock first, its output in the log.

A failed resolve or build ends the attempt ``environment_build_failed`` with uv's message,
not retried. On Ray the control plane's wrapper only resolves (``installs=False``: the
lock goes to the Ray executor with the launch) and each Ray node's agent only installs
(``resolves=False``: :mod:`.ray_remote`): Ray nodes never resolve.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from nimbus.jobs.domain import ExitReason
from nimbus.jobs.environments import BuildFailed, Builds
from nimbus.jobs.envlock import Lock
from nimbus.jobs.executors.base import AttemptLaunch, Executor, ExitStatus, Handle

ENV_VARIABLE = "NIMBUS_JOB_ENV"
log = logging.getLogger(__name__)


@dataclass
class EnvironmentHandle:
    """An attempt with an environment: its lock (once resolved), its key (once the
    platform is known), its build, then the inner executor's handle."""

    attempt_id: str
    launch: AttemptLaunch
    platform: Future[tuple[str, ...]]
    lock: Lock | None = None
    resolving: Future[Lock] | None = None
    key: str = ""
    build: Future[None] | None = None
    inner: Handle | None = None
    held: bool = False
    killed: bool = False
    ended: ExitStatus | None = None  # ended before it started (a failed resolve or build)
    notes: list[str] = field(default_factory=list)  # log lines, written in one chunk
    recorded: Future[None] | None = None  # the lock's record with the job


class EnvironmentExecutor:
    """The inner executor, with job environments resolved (``resolves``) and built
    (``installs``) before attempts start."""

    def __init__(
        self, inner: Executor, builds: Builds, *, resolves: bool = True, installs: bool = True
    ) -> None:
        self.inner, self.builds = inner, builds
        self.resolves, self.installs = resolves, installs
        # A lock is recorded with its job off the scheduler's thread (a write transaction:
        # not on a cached start's path); the attempt's end waits for it (see poll).
        self._records = ThreadPoolExecutor(max_workers=1, thread_name_prefix="env-lock")

    def start(self, launch: AttemptLaunch) -> Handle:
        if not launch.requirements:
            return self.inner.start(launch)
        if not self.resolves and not launch.lock:
            raise ValueError("this node never resolves: the attempt must carry its lock")
        # The platform's packages are read once off this thread (the first read runs the
        # interpreter, ~1 s: never on a scheduler's tick); until then the attempt waits in
        # poll(). Once read, a recorded or remembered lock and a built environment start
        # the attempt here, at once.
        handle = EnvironmentHandle(launch.attempt_id, launch, self.builds.platform_future())
        if handle.platform.done() and handle.platform.exception() is None:
            try:
                handle.ended = self._advance(handle)
            finally:
                _flush(handle)
        return handle

    def _advance(self, handle: EnvironmentHandle) -> ExitStatus | None:
        """Take the attempt as far as it can go now: its lock, its environment, its start.
        An end (a failed resolve or build) as an exit status; None while it waits."""
        if handle.lock is None:
            ended = self._lock_of(handle)
            if handle.lock is None:
                return ended
        assert handle.lock is not None
        if not self.installs:  # the control plane on Ray: each node installs the lock
            handle.inner = self.inner.start(replace(handle.launch, lock=handle.lock))
            return None
        if not handle.key:
            handle.key = self.builds.key(handle.lock)
            if self._start_built(handle, said=True):
                return None
            self._request_build(handle)
            return None
        assert handle.build is not None
        if not handle.build.done():
            return None
        error = handle.build.exception()
        if error is not None:
            return _failed(error)
        if not self._start_built(handle, said=False):  # removed meanwhile: build it again
            handle.build, _ = self.builds.request(handle.key, handle.lock, handle.launch.output)
        return None

    def _lock_of(self, handle: EnvironmentHandle) -> ExitStatus | None:
        """Find the attempt's lock (sets ``handle.lock``), or start or follow its resolve."""
        launch = handle.launch
        if handle.resolving is None:
            if launch.lock:
                handle.lock = launch.lock
                _note(handle, f"nimbus: environment: the job's recorded lock: {_pins(launch.lock)}")
                return None
            remembered = self.builds.resolved(launch.requirements)
            if remembered is not None:
                handle.lock, age = remembered
                _note(
                    handle,
                    f"nimbus: environment: {', '.join(launch.requirements)} resolved here "
                    f"{age:.0f}s ago: locked to {_pins(handle.lock)}",
                )
                self._record(handle)
                return None
            handle.resolving, mine = self.builds.resolve(launch.requirements, launch.output)
            if not mine:
                _note(handle, "nimbus: environment: being resolved for another job: waiting")
            return None
        if not handle.resolving.done():
            return None
        error = handle.resolving.exception()
        if error is not None:
            return _failed(error)
        handle.lock = handle.resolving.result()
        _note(handle, f"nimbus: environment: locked to {_pins(handle.lock)}")
        self._record(handle)
        return None

    def _record(self, handle: EnvironmentHandle) -> None:
        """Keep the lock with the job (its retries install exactly it), on a thread."""
        locked, lock = handle.launch.locked, handle.lock
        if locked is None or lock is None:
            return

        def record() -> None:
            try:
                locked(lock)
            except Exception:  # a retry would resolve again: not worth ending the attempt
                log.exception("could not record the lock of attempt %s", handle.attempt_id)

        handle.recorded = self._records.submit(record)

    def _start_built(self, handle: EnvironmentHandle, *, said: bool) -> bool:
        """Start the attempt in its environment if it is built (holding it)."""
        if not self.builds.hold(handle.key):
            return False
        handle.held = True
        if said:
            _note(handle, f"nimbus: environment {handle.key[:12]} found: reused, not rebuilt")
        _flush(handle)  # before the job's own output
        try:
            handle.inner = self.inner.start(self._with_env(handle.launch, handle.key))
        except BaseException:
            self._release(handle)
            raise
        return True

    def _request_build(self, handle: EnvironmentHandle) -> None:
        assert handle.lock is not None
        launch, key = handle.launch, handle.key
        handle.build, mine = self.builds.request(key, handle.lock, launch.output)
        _note(
            handle,
            f"nimbus: environment {key[:12]} not built yet: building {_pins(handle.lock)}"
            if mine
            else f"nimbus: environment {key[:12]} is being built for another job: waiting",
        )

    def _with_env(self, launch: AttemptLaunch, key: str) -> AttemptLaunch:
        path = str(self.builds.store.path(key))
        return replace(launch, extra_env={**launch.extra_env, ENV_VARIABLE: path})

    def poll(self, handle: Handle) -> ExitStatus | None:
        if not isinstance(handle, EnvironmentHandle):
            return self.inner.poll(handle)
        status = self._poll(handle)
        if status is not None and handle.recorded is not None:
            handle.recorded.exception(timeout=30)  # recorded before a retry can be claimed
        return status

    def _poll(self, handle: EnvironmentHandle) -> ExitStatus | None:
        if handle.inner is not None:
            status = self.inner.poll(handle.inner)
            if status is not None:
                self._release(handle)
            return status
        if handle.killed:
            return ExitStatus(None, signal.SIGTERM)
        if handle.ended is not None:
            return handle.ended
        if not handle.platform.done():
            return None
        failed = handle.platform.exception()
        if failed is not None:  # the node's interpreter: retried
            detail = f"environment: cannot list the platform's packages: {failed!r}"
            return ExitStatus(None, limit=ExitReason.INFRA, detail=detail)
        try:
            return self._advance(handle)
        except Exception as exc:
            return ExitStatus(None, limit=ExitReason.INFRA, detail=f"could not start: {exc}")
        finally:
            _flush(handle)

    def _release(self, handle: EnvironmentHandle) -> None:
        if handle.held:
            self.builds.release(handle.key)
            handle.held = False

    def kill(self, handle: Handle) -> None:
        if not isinstance(handle, EnvironmentHandle):
            self.inner.kill(handle)
        elif handle.inner is not None:
            self.inner.kill(handle.inner)
        else:
            handle.killed = True  # the build goes on: other jobs may share it

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        return self.inner.reap_orphans(should_kill)

    def close(self) -> None:
        self._records.shutdown(wait=True)
        self.builds.close()
        self.inner.close()


@dataclass(frozen=True)
class _Nothing:
    attempt_id: str


class EnvironmentOnly:
    """Runs nothing. Under an :class:`EnvironmentExecutor`, an attempt of it ends (exit 0)
    as soon as its environment is built: how a Ray node gets the environment of a job of
    several workers before any of them starts (:mod:`.ray_executor`)."""

    def start(self, launch: AttemptLaunch) -> Handle:
        return _Nothing(launch.attempt_id)

    def poll(self, handle: Handle) -> ExitStatus | None:
        return ExitStatus(0)

    def kill(self, handle: Handle) -> None:
        return None

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        return []

    def close(self) -> None:
        return None


def _failed(error: BaseException) -> ExitStatus:
    """How an attempt ends when its resolve or build raised ``error``."""
    if isinstance(error, BuildFailed):  # the requirements' fault: the same again fails
        return ExitStatus(None, limit=ExitReason.ENVIRONMENT_BUILD_FAILED, detail=str(error))
    # the node's (no uid free, a full disk): retried
    return ExitStatus(None, limit=ExitReason.INFRA, detail=f"environment: {error!r}")


def _pins(lock: Lock) -> str:
    return " ".join(lock) if lock else "(nothing)"


def _note(handle: EnvironmentHandle, line: str) -> None:
    handle.notes.append(line + "\n")


def _flush(handle: EnvironmentHandle) -> None:
    """The attempt's notes, in one chunk of its log (one write)."""
    if handle.notes and handle.launch.output is not None:
        handle.launch.output("".join(handle.notes))
    handle.notes.clear()
