"""Attempts with an environment (``--requirements``): built first, then started.

:class:`EnvironmentExecutor` wraps the node's executor. An attempt without requirements
goes straight to it. One whose environment is built starts at once, with
``NIMBUS_JOB_ENV`` naming the environment (the runtime adds it to ``sys.path``): on the
fork server and warm sandboxes too, so a cached environment starts as warm as the base.
Otherwise its environment is built first (:class:`~nimbus.jobs.environments.Builds`, off
the scheduler's thread, its output in the attempt's log) while the attempt holds its lease
like any running one; a failed build ends it with ``environment_build_failed`` and uv's
message, not retried.
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
    """An attempt with an environment: its build, then the inner executor's handle."""

    attempt_id: str
    launch: AttemptLaunch
    key: str
    build: Future[None] | None = None
    inner: Handle | None = None
    held: bool = False
    killed: bool = False


class EnvironmentExecutor:
    """The inner executor, with job environments built (or refused, ``unsupported``
    saying why: the Ray executor's nodes do not have them) before attempts start."""

    def __init__(
        self, inner: Executor, builds: Builds | None, *, unsupported: str | None = None
    ) -> None:
        self.inner, self.builds, self.unsupported = inner, builds, unsupported

    def start(self, launch: AttemptLaunch) -> Handle:
        if not launch.requirements:
            return self.inner.start(launch)
        if self.builds is None:
            handle = EnvironmentHandle(launch.attempt_id, launch, "")
            handle.build = _failed(self.unsupported or "job environments are off on this node")
            return handle
        key = self.builds.key(launch.requirements)
        handle = EnvironmentHandle(launch.attempt_id, launch, key)
        if self.builds.hold(key):
            handle.held = True
            _say(launch, f"nimbus: environment {key[:12]} found: reused, not rebuilt")
            try:
                handle.inner = self.inner.start(self._with_env(launch, key))
            except BaseException:
                self._release(handle)
                raise
            return handle
        handle.build, mine = self.builds.request(key, launch.requirements, launch.output)
        _say(
            launch,
            f"nimbus: environment {key[:12]} not built yet: building "
            f"{', '.join(launch.requirements)}"
            if mine
            else f"nimbus: environment {key[:12]} is being built for another job: waiting",
        )
        return handle

    def _with_env(self, launch: AttemptLaunch, key: str) -> AttemptLaunch:
        assert self.builds is not None
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
        assert handle.build is not None
        if not handle.build.done():
            return None
        error = handle.build.exception()
        if isinstance(error, BuildFailed):  # the requirements' fault: the same again fails
            return ExitStatus(None, limit=ExitReason.ENVIRONMENT_BUILD_FAILED, detail=str(error))
        if error is not None:  # the node's (no uid free, a full disk): retried
            return ExitStatus(None, limit=ExitReason.INFRA, detail=f"environment: {error!r}")
        assert self.builds is not None
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
        if handle.held and self.builds is not None:
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
        if self.builds is not None:
            self.builds.close()
        self.inner.close()


def _failed(message: str) -> Future[None]:
    future: Future[None] = Future()
    future.set_exception(BuildFailed(message))
    return future


def _say(launch: AttemptLaunch, line: str) -> None:
    if launch.output is not None:
        launch.output(line + "\n")
