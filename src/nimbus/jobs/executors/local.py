"""The local executor: each worker a fresh ``python`` subprocess on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nimbus.jobs.executors.base import AttemptLaunch, ExitStatus
from nimbus.jobs.executors.process import ProcessExecutor, Worker, killpg
from nimbus.jobs.isolation import JOB_UMASK
from nimbus.jobs.sandbox import AttemptSandbox, Sandbox, seccomp_memfd


class LocalExecutor(ProcessExecutor):
    """Starts every worker with ``subprocess`` (fork + exec): simple, isolated, and as slow
    to start as the job's imports. See :class:`~.forkserver.ForkServerExecutor` for speed."""

    def __init__(
        self,
        jobs_root: Path,
        *,
        python: str = sys.executable,
        base_env: Mapping[str, str] | None = None,
        grace_seconds: float = 10.0,
        sandbox: Sandbox | None = None,
    ) -> None:
        super().__init__(jobs_root, base_env=base_env, grace_seconds=grace_seconds, sandbox=sandbox)
        self.python = python
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def _spawn(
        self, launch: AttemptLaunch, env: dict[str, str], sandbox: AttemptSandbox | None
    ) -> tuple[int, int]:
        argv = launch.program.argv(self.python)
        extra: dict[str, Any] = {}
        seccomp_fd = None
        read_fd, write_fd = os.pipe()
        try:
            if sandbox is not None and self.sandbox is not None:
                # The launcher joins the attempt's cgroup and drops to its uid before bwrap.
                seccomp_fd = seccomp_memfd()
                argv = self.sandbox.command(sandbox, argv, seccomp_fd=seccomp_fd)
                extra.update(umask=JOB_UMASK, pass_fds=(seccomp_fd,))
            proc = subprocess.Popen(
                argv,
                cwd=launch.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
                close_fds=True,
                **extra,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        self._procs[proc.pid] = proc
        return proc.pid, read_fd

    def _reap(self, worker: Worker) -> ExitStatus | None:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        if os.waitid(os.P_PID, worker.pid, flags) is None:
            return None
        # Ended but not yet reaped, so its pid (the group id) cannot be reused: kill what it
        # left behind in its group, then reap it.
        killpg(worker.pid, signal.SIGKILL)
        proc = self._procs.pop(worker.pid)
        return ExitStatus.from_returncode(proc.wait())
