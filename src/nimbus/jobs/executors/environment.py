"""Attempts with an environment (``--requirements``): built first, then started.

:class:`EnvironmentExecutor` wraps the node's executor. An attempt without requirements
goes straight to it. One whose environment is built starts at once, with
``NIMBUS_JOB_ENV`` naming the environment (the runtime adds it to ``sys.path``): on the
fork server and warm sandboxes too, so a cached environment starts as warm as the base.
Otherwise its environment is built first (:class:`~nimbus.jobs.environments.Builds`, off
the scheduler's thread, its output in the attempt's log) while the attempt holds its lease
like any running one; a failed build ends it with ``environment_build_failed`` and uv's
message, not retried.

The same wrapper runs on each Ray node, around its agent's executors (:mod:`.ray_remote`):
a Ray node builds, keeps and reuses the environments of the attempts placed on it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

from nimbus.jobs.domain import ExitReason
from nimbus.jobs.environments import BuildFailed, Builds
from nimbus.jobs.executors.base import AttemptLaunch, Executor, ExitStatus, Handle

ENV_VARIABLE = "NIMBUS_JOB_ENV"


@dataclass
class EnvironmentHandle:
    """An attempt with an environment: its key (once the platform is known), its build,
    then the inner executor's handle."""

    attempt_id: str
    launch: AttemptLaunch
    platform: Future[tuple[str, ...]]
    key: str = ""
    build: Future[None] | None = None
    inner: Handle | None = None
    held: bool = False
    killed: bool = False


class EnvironmentExecutor:
    """The inner executor, with job environments built before attempts start."""

    def __init__(self, inner: Executor, builds: Builds) -> None:
        self.inner, self.builds = inner, builds

    def start(self, launch: AttemptLaunch) -> Handle:
        if not launch.requirements:
            return self.inner.start(launch)
        # The key hashes the platform's packages, read once off this thread (the first
        # read runs the interpreter, ~1 s: never on a scheduler's tick); until then the
        # attempt waits in poll().
        handle = EnvironmentHandle(launch.attempt_id, launch, self.builds.platform_future())
        if handle.platform.done() and handle.platform.exception() is None:
            self._begin(handle)
        return handle

    def _begin(self, handle: EnvironmentHandle) -> None:
        """With the key known: start in the built environment, or have it built first."""
        launch = handle.launch
        key = handle.key = self.builds.key(launch.requirements)
        if self.builds.hold(key):
            handle.held = True
            _say(launch, f"nimbus: environment {key[:12]} found: reused, not rebuilt")
            try:
                handle.inner = self.inner.start(self._with_env(launch, key))
            except BaseException:
                self._release(handle)
                raise
            return
        handle.build, mine = self.builds.request(key, launch.requirements, launch.output)
        _say(
            launch,
            f"nimbus: environment {key[:12]} not built yet: building "
            f"{', '.join(launch.requirements)}"
            if mine
            else f"nimbus: environment {key[:12]} is being built for another job: waiting",
        )

    def _with_env(self, launch: AttemptLaunch, key: str) -> AttemptLaunch:
        path = str(self.builds.store.path(key))
        return replace(launch, extra_env={**launch.extra_env, ENV_VARIABLE: path})

    def poll(self, handle: Handle) -> ExitStatus | None:
        if not isinstance(handle, EnvironmentHandle):
            return self.inner.poll(handle)
        if handle.inner is not None:
            status = self.inner.poll(handle.inner)
            if status is not None:
                self._release(handle)
            return status
        if handle.killed:
            return ExitStatus(None, signal.SIGTERM)
        if not handle.key:
            if not handle.platform.done():
                return None
            failed = handle.platform.exception()
            if failed is not None:  # the node's interpreter: retried
                detail = f"environment: cannot list the platform's packages: {failed!r}"
                return ExitStatus(None, limit=ExitReason.INFRA, detail=detail)
            try:
                self._begin(handle)
            except Exception as exc:
                return ExitStatus(None, limit=ExitReason.INFRA, detail=f"could not start: {exc}")
            return None
        assert handle.build is not None
        if not handle.build.done():
            return None
        error = handle.build.exception()
        if isinstance(error, BuildFailed):  # the requirements' fault: the same again fails
            return ExitStatus(None, limit=ExitReason.ENVIRONMENT_BUILD_FAILED, detail=str(error))
        if error is not None:  # the node's (no uid free, a full disk): retried
            return ExitStatus(None, limit=ExitReason.INFRA, detail=f"environment: {error!r}")
        if not self.builds.hold(handle.key):  # removed meanwhile: build it again
            handle.build, _ = self.builds.request(
                handle.key, handle.launch.requirements, handle.launch.output
            )
            return None
        handle.held = True
        try:
            handle.inner = self.inner.start(self._with_env(handle.launch, handle.key))
        except Exception as exc:
            self._release(handle)
            return ExitStatus(None, limit=ExitReason.INFRA, detail=f"could not start: {exc}")
        return None

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


def _say(launch: AttemptLaunch, line: str) -> None:
    if launch.output is not None:
        launch.output(line + "\n")
