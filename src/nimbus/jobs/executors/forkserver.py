"""The fork-server executor: workers forked from a zygote that already imported the heavy
modules (``torch``...), so an attempt starts in milliseconds instead of seconds.

The zygote is started with the scrubbed base environment only (a forked child's
``/proc/self/environ`` is the zygote's), and every child replaces ``os.environ`` with the
attempt's environment before the job's code runs. Modules imported in the zygote read
their environment once, there: per-attempt settings such as ``OMP_NUM_THREADS`` reach them
only through explicit calls (``torch.set_num_threads``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from nimbus.errors import Unavailable
from nimbus.jobs.executors.base import AttemptLaunch, ExitStatus
from nimbus.jobs.executors.process import ProcessExecutor, Worker
from nimbus.jobs.executors.zygote_link import ZYGOTE_SCRIPT, ZygoteLink
from nimbus.jobs.sandbox import AttemptSandbox

__all__ = ["ZYGOTE_SCRIPT", "ForkServerExecutor"]


class ForkServerExecutor(ProcessExecutor):
    """Forks workers from a long-lived zygote; ``preload`` names the modules it imports.

    Its children run as the server's own user, unsandboxed (``job_isolation = none``):
    with the sandbox, :func:`~nimbus.jobs.executors.make_executor` starts each attempt
    in a warm sandbox of its own instead (:mod:`.warm`)."""

    def __init__(
        self,
        jobs_root: Path,
        *,
        preload: Sequence[str] = ("torch",),
        python: str = sys.executable,
        base_env: Mapping[str, str] | None = None,
        grace_seconds: float = 10.0,
        start_timeout: float = 120.0,
    ) -> None:
        super().__init__(jobs_root, base_env=base_env, grace_seconds=grace_seconds)
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zygote_env = {**self.base_env, "PYTHONUNBUFFERED": "1", "HOME": str(self.jobs_root)}
        self.jobs_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._zygote = subprocess.Popen(
            [python, "-P", str(ZYGOTE_SCRIPT), str(theirs.fileno()), json.dumps(list(preload))],
            pass_fds=[theirs.fileno()],
            env=zygote_env,
            cwd=self.jobs_root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        theirs.close()
        self._link = ZygoteLink(self._sock, "fork server")
        try:
            ready = self._link.wait_ready(start_timeout)
        except Unavailable:
            self._zygote.kill()
            self._zygote.wait()
            raise
        failed = ready.get("failed")
        self.preload_failed: dict[str, str] = failed if isinstance(failed, dict) else {}

    def _spawn(
        self, launch: AttemptLaunch, env: dict[str, str], sandbox: AttemptSandbox | None
    ) -> tuple[int, int]:
        read_fd, write_fd = os.pipe()
        try:
            pid = self._link.spawn(launch.program, str(launch.workdir), env, write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return pid, read_fd

    def _reap(self, worker: Worker) -> ExitStatus | None:
        return self._link.exit_of(worker.pid)

    def close(self) -> None:
        super().close()
        self._link.close()  # the zygote sees EOF, kills what is left
        try:
            self._zygote.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._zygote.kill()
            self._zygote.wait()
