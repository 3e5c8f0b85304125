"""Replica processes: how the supervisor spawns, watches, signals and probes them.

Two kinds of handle behind one small interface: :class:`SpawnedProcess` for the children a
supervisor starts, :class:`AdoptedProcess` for replicas left running by a previous control
plane (not our children: watched and signalled through a pidfd, so a recycled pid is never
mistaken for, or signalled as, a replica).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import select
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

HEALTH_PATH = "/v2/health/ready"
EXITED_UNKNOWN = -1  # an adopted replica's exit status cannot be known


class ReplicaProcess(Protocol):
    """A running (or finished) replica."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None:
        """None while it runs; its exit code once it has exited (negative: killed by a signal)."""
        ...

    def send_signal(self, sig: int) -> None:
        """Signal it; a no-op once it has exited."""
        ...

    def close(self) -> None:
        """Release the handle (the process itself is left alone)."""
        ...


class Spawner(Protocol):
    """Starts replica processes (injectable: tests substitute fakes)."""

    def __call__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        pass_fds: Sequence[int],
        log_path: Path | None,
    ) -> ReplicaProcess: ...


class Probe(Protocol):
    """Is the replica whose health port is ``port`` ready? Never raises."""

    def __call__(self, host: str, port: int, timeout: float) -> bool: ...


class SpawnedProcess:
    """A child started by this supervisor."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()  # also reaps it: no zombies

    def send_signal(self, sig: int) -> None:
        # Popen checks for itself that the child has not been reaped, so a recycled pid
        # is never signalled.
        self._popen.send_signal(sig)

    def close(self) -> None:
        pass


def spawn(
    argv: Sequence[str], env: Mapping[str, str], pass_fds: Sequence[int], log_path: Path | None
) -> SpawnedProcess:
    """The real spawner: a child in its own session (a SIGKILL of the control plane, or a
    Ctrl+C in its terminal, leaves it serving), output appended to ``log_path``."""
    log: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - the child keeps its own copy
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            pass_fds=tuple(pass_fds),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        if not isinstance(log, int):
            log.close()
    return SpawnedProcess(popen)


class AdoptedProcess:
    """A replica this supervisor did not start, held through a pidfd (Linux >= 5.3)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._fd: int | None = os.pidfd_open(pid)  # raises ProcessLookupError when gone
        self._code: int | None = None

    @property
    def pid(self) -> int:
        return self._pid

    def poll(self) -> int | None:
        if self._code is None and self._fd is not None:
            readable, _, _ = select.select([self._fd], [], [], 0)
            if readable:  # a pidfd turns readable when its process exits
                self._code = EXITED_UNKNOWN
        return self._code

    def send_signal(self, sig: int) -> None:
        if self._fd is not None and self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._fd, sig)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._code = self._code if self._code is not None else EXITED_UNKNOWN


def probe_ready(host: str, port: int, timeout: float) -> bool:
    """GET /v2/health/ready on a fresh connection (closed after: nothing lingers to hold a
    draining replica open)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", HEALTH_PATH, headers={"Connection": "close"})
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
