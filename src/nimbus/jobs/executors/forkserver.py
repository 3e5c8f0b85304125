"""The fork-server executor: workers forked from a zygote that already imported the heavy
modules (``torch``...), so an attempt starts in milliseconds instead of seconds.

The zygote is started with the scrubbed base environment only (a forked child's
``/proc/self/environ`` is the zygote's), and every child replaces ``os.environ`` with the
attempt's environment before the job's code runs. Modules imported in the zygote read
their environment once, there: per-attempt settings such as ``OMP_NUM_THREADS`` reach them
only through explicit calls (``torch.set_num_threads``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nimbus.errors import Unavailable
from nimbus.jobs.executors.base import AttemptLaunch, ExitStatus
from nimbus.jobs.executors.process import ProcessExecutor, Worker
from nimbus.jobs.sandbox import AttemptSandbox

# Run as a script (``-P``: its directory stays off sys.path) so the zygote imports nothing
# of Nimbus: only the standard library and ``preload``.
ZYGOTE_SCRIPT = Path(__file__).with_name("zygote.py")
MAX_MESSAGE = 1 << 20


class ForkServerExecutor(ProcessExecutor):
    """Forks workers from a long-lived zygote; ``preload`` names the modules it imports.

    Its children run as the server's own user, unsandboxed (``job_isolation = none``):
    with the sandbox, :func:`~nimbus.jobs.executors.make_executor` starts attempts cold
    in bubblewrap instead."""

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
        self._sock.settimeout(start_timeout)
        try:
            ready = json.loads(self._sock.recv(MAX_MESSAGE) or b"{}")
        except (TimeoutError, json.JSONDecodeError):
            ready = {}
        if not ready.get("ready"):
            self._zygote.kill()
            raise Unavailable("the fork server did not start")
        self._sock.settimeout(None)
        self.preload_failed: dict[str, str] = ready.get("failed", {})
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._reply_ready = threading.Condition(self._lock)
        self._exits: dict[int, ExitStatus] = {}
        self._alive = True
        self._listener = threading.Thread(target=self._listen, name="forkserver", daemon=True)
        self._listener.start()

    def _listen(self) -> None:
        while True:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            with self._lock:
                if not data:  # the zygote died; its children die with it (PDEATHSIG)
                    self._alive = False
                    self._reply_ready.notify_all()
                    return
                message = json.loads(data)
                if "exit" in message:
                    signo = message.get("signal")
                    status = ExitStatus(None, signo) if signo else ExitStatus(message["code"])
                    self._exits[message["exit"]] = status
                else:
                    self._replies[message["id"]] = message
                    self._reply_ready.notify_all()

    def _spawn(
        self, launch: AttemptLaunch, env: dict[str, str], sandbox: AttemptSandbox | None
    ) -> tuple[int, int]:
        request: dict[str, Any] = {
            "id": next(self._ids),
            "cwd": str(launch.workdir),
            "env": env,
            "module": launch.program.module,
            "code": launch.program.code,
            "args": list(launch.program.args),
        }
        read_fd, write_fd = os.pipe()
        try:
            with self._lock:
                if not self._alive:
                    raise Unavailable("the fork server is gone")
                socket.send_fds(self._sock, [json.dumps(request).encode()], [write_fd])
                self._reply_ready.wait_for(
                    lambda: request["id"] in self._replies or not self._alive, timeout=30
                )
                reply = self._replies.pop(request["id"], {"error": "no answer from the zygote"})
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        if "pid" not in reply:
            os.close(read_fd)
            raise Unavailable(f"the fork server could not start the job: {reply['error']}")
        return int(reply["pid"]), read_fd

    def _reap(self, worker: Worker) -> ExitStatus | None:
        with self._lock:
            status = self._exits.pop(worker.pid, None)
            if status is None and not self._alive:
                status = ExitStatus(None, signal.SIGKILL)
        return status

    def close(self) -> None:
        super().close()
        # shutdown, not just close: the listener thread's recv holds the socket open.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # the zygote sees EOF, kills what is left
        self._sock.close()
        try:
            self._zygote.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._zygote.kill()
            self._zygote.wait()
