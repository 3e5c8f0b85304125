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
from nimbus.jobs.isolation import JOB_UMASK, JobUser


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
        run_as: JobUser | None = None,
    ) -> None:
        super().__init__(jobs_root, base_env=base_env, grace_seconds=grace_seconds, run_as=run_as)
        self.python = python
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        # Popen drops to the user in the child, between fork and exec: setgroups([]),
        # setregid, setreuid (real, effective and saved ids: root cannot be taken back).
        self._as_user: dict[str, Any] = (
            {**run_as.popen_kwargs(), "umask": JOB_UMASK} if run_as is not None else {}
        )

    def _spawn(self, launch: AttemptLaunch, env: dict[str, str]) -> tuple[int, int]:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                launch.program.argv(self.python),
                cwd=launch.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
                close_fds=True,
                **self._as_user,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
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
