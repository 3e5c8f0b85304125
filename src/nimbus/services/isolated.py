"""Checks of untrusted input (a script to compile, an ONNX graph to run) in a limited child
process, never in the control plane's own: a hostile input can then cost a child its time
and memory, not the server its event loop, its memory or its secrets.

:func:`run_limited` is the one way to do it. The child:

- runs ``argv`` through a tiny launcher (``python -I -S -c``) that moves the input files to
  fds 3, 4, ... (in the order given; the child reads them there, never by path), sets its
  resource limits (address space, CPU seconds, file size, open files, no core dumps) and
  then ``exec``\\ s ``argv``: no ``preexec_fn``, which is unsafe in a threaded server;
- starts as ``user`` (no supplementary groups) when given: a root server passes an
  unprivileged user, so the child cannot open NIMBUS_HOME, which is 0700 (see
  :mod:`nimbus.jobs.isolation`); its inputs are open fds, so it needs no path to them;
- gets a scrubbed environment (``PATH``, ``HOME``/``TMPDIR``, ``LANG``, one thread for
  numerical libraries) and a private, empty working directory (0700, its own), removed
  after;
- is its own session and process group, killed whole (SIGKILL) at the wall-clock limit
  and once it has exited (nothing it forked lingers in its group);
- writes stdout and stderr to unnamed files, bounded by its file-size limit, read back at
  the end (a check prints one JSON object on stdout: see :func:`json_reply`).

:class:`LimitedRunner` holds what a server decides once (the user, how many checks run at
a time) and bounds concurrency, so a burst of uploads queues instead of forking without end.

Plugging in a stronger sandbox (bubblewrap, a cgroup): pass ``wrap`` to
:class:`LimitedRunner`, a function from the launcher's full command line to the sandboxed
one (for example ``["bwrap", "--unshare-all", "--die-with-parent", ..., "--", *argv]``,
and for a cgroup, a wrapper that moves itself into the cgroup before ``exec``). The
launcher still runs inside it, so the rlimits, the fd layout and the reply contract stay as
they are; the sandbox must keep fds 3.. open (bwrap does) and the interpreter and the
``nimbus`` package visible (read-only) for checks that import Nimbus.

Where rlimits do not reach: RLIMIT_AS bounds one process, not a process tree (a child that
forks could use several times the limit; the checks here do not fork), and a process that
calls ``setsid`` leaves the group that is killed: a PID namespace or a cgroup's
``cgroup.kill`` (the sandbox) closes both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nimbus.errors import InvalidInput, Unavailable
from nimbus.jobs.isolation import JobUser, blocked

log = logging.getLogger(__name__)

FIRST_INPUT_FD = 3
OPEN_FILES = 256
TIME, CPU, MEMORY = "time", "cpu", "memory"  # which limit ended a child (Outcome.limit)
CHECK_USER = "nimbus-check"  # not the job user: running jobs must not reach the checks

# Run with ``python -I -S -c``: argv[1] is a JSON object {fds, limits}; argv[2:] is the
# command to exec once the inputs sit at fds 3.. and the limits are set.
_LAUNCHER = """\
import fcntl, json, os, resource, sys
spec = json.loads(sys.argv[1])
fds = spec["fds"]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
for name, value in spec["limits"].items():
    resource.setrlimit(getattr(resource, name), tuple(value))
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass(frozen=True)
class Limits:
    """What one child may use: wall-clock seconds (then SIGKILL), CPU seconds (SIGXCPU),
    address space in bytes, and bytes it may write to any file (its stdout included)."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 30
    memory_bytes: int = 2 * 1024**3
    output_bytes: int = 1024**2

    def rlimits(self, inputs: int) -> dict[str, tuple[int, int]]:
        cpu = max(1, int(self.cpu_seconds))
        return {
            "RLIMIT_AS": (self.memory_bytes, self.memory_bytes),
            # SIGXCPU at the soft limit, SIGKILL one second later if it is caught.
            "RLIMIT_CPU": (cpu, cpu + 1),
            "RLIMIT_FSIZE": (self.output_bytes, self.output_bytes),
            "RLIMIT_NOFILE": (OPEN_FILES + inputs, OPEN_FILES + inputs),
            "RLIMIT_CORE": (0, 0),
        }


@dataclass(frozen=True)
class Outcome:
    """How a child ended: its exit status (negative: the signal that killed it), what it
    wrote, and which limit ended it (:data:`TIME`, :data:`CPU`, or None)."""

    returncode: int
    stdout: bytes
    stderr: bytes
    limit: str | None
    seconds: float


def run_limited(
    argv: Sequence[str],
    *,
    limits: Limits,
    inputs: Sequence[Path] = (),
    user: JobUser | None = None,
    env: Mapping[str, str] | None = None,
    wrap: Callable[[list[str]], list[str]] | None = None,
    python: str = sys.executable,
) -> Outcome:
    """Run ``argv`` in a limited child (see the module's docstring) and wait for it.

    ``inputs`` are opened here, read-only, and reach the child as fds 3, 4, ... in order;
    ``env`` adds to (or overrides) the scrubbed environment. Raises OSError only when the
    child cannot be started.
    """
    workdir = Path(tempfile.mkdtemp(prefix="nimbus-check-"))
    try:
        if user is not None:
            os.chown(workdir, user.uid, user.gid)
        with ExitStack() as stack:
            fds = []
            for path in inputs:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                stack.callback(os.close, fd)
                fds.append(fd)
            out = stack.enter_context(tempfile.TemporaryFile())
            err = stack.enter_context(tempfile.TemporaryFile())
            spec = {"fds": fds, "limits": limits.rlimits(len(fds))}
            command = [python, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec), *argv]
            started = time.monotonic()
            proc = subprocess.Popen(
                wrap(command) if wrap is not None else command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env={**_environment(workdir), **(env or {})},
                pass_fds=fds,
                start_new_session=True,
                **(user.popen_kwargs() if user is not None else {}),
            )
            limit = _wait(proc, limits.wall_seconds)
            seconds = time.monotonic() - started
            if limit is None and proc.returncode == -signal.SIGXCPU:
                limit = CPU
            return Outcome(proc.returncode, _read(out), _read(err), limit, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _environment(workdir: Path) -> dict[str, str]:
    home = str(workdir)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _wait(proc: subprocess.Popen[bytes], seconds: float) -> str | None:
    """Wait up to ``seconds``; kill the child's whole group then, and in any case once it
    ended. Returns :data:`TIME` when the wall-clock limit ended it."""
    limit = None
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        limit = TIME
    # ProcessLookupError: the group is gone; PermissionError: macOS, for a zombie leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return limit


def _read(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read()


def limit_text(limit: str, limits: Limits) -> str:
    """``time limit of 20 s``: the limit named by :data:`TIME`, :data:`CPU` or
    :data:`MEMORY`, with its value, for error messages."""
    if limit == TIME:
        return f"time limit of {limits.wall_seconds:g} s"
    if limit == CPU:
        return f"CPU time limit of {limits.cpu_seconds} s"
    return f"memory limit of {limits.memory_bytes // 1024**2} MiB"


def json_reply(outcome: Outcome) -> dict[str, Any] | None:
    """The JSON object a check printed as its last stdout line, or None if there is none
    (it crashed, or a limit ended it)."""
    lines = outcome.stdout.strip().splitlines()
    if not lines:
        return None
    try:
        reply = json.loads(lines[-1])
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


USERADD = ("--system", "--no-create-home", "--shell", "/usr/sbin/nologin")

# Run as the check user by :func:`preflight`: what a check needs, checked by the kernel itself.
_PREFLIGHT = """\
import importlib.util, json, os, sys
problems = [p for p in json.loads(sys.argv[1]) if not os.access(p, os.X_OK)]
spec = importlib.util.find_spec("nimbus")
where = list(spec.submodule_search_locations or []) if spec else []
if not where or not os.access(where[0], os.R_OK | os.X_OK):
    problems.append(where[0] if where else "nimbus")
print(json.dumps(problems))
"""


def ensure_system_user(name: str) -> JobUser:
    """The system user ``name``, created (``useradd --system``) if missing; KeyError when it
    cannot be created."""
    try:
        return JobUser.lookup(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin")
    if useradd is not None:
        subprocess.run([useradd, *USERADD, name], capture_output=True, text=True, check=False)
    return JobUser.lookup(name)  # created here, or by a server starting beside us


def preflight(user: JobUser, paths: Sequence[Path], python: str = sys.executable) -> list[str]:
    """Why ``user`` could not run checks: the interpreter, the ``nimbus`` package or one of
    ``paths`` out of its reach. Empty when it can."""
    try:
        done = subprocess.run(
            [python, "-c", _PREFLIGHT, json.dumps([str(p) for p in paths])],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **user.popen_kwargs(),
        )
    except OSError as exc:
        where = blocked(Path(python).resolve(), user.uid, user.gid)
        return [f"cannot run {python}: {exc.strerror}" + (f" ({where})" if where else "")]
    if done.returncode != 0:
        return [f"{python} failed as {user.name}: {done.stderr.strip()[-500:]}"]
    found: list[str] = json.loads(done.stdout)
    notes = [(path, blocked(Path(path), user.uid, user.gid)) for path in found]
    return [f"cannot reach {path}" + (f" ({note})" if note else "") for path, note in notes]


def resolve_check_user(
    setting: str, *, euid: int | None = None, python: str = sys.executable
) -> JobUser | None:
    """The user checks run as, per the ``check_user`` setting; None: the server's own.

    ``auto``: a root server uses the system user :data:`CHECK_USER` (created if missing),
    any other server itself. When that user cannot run the interpreter or import Nimbus
    (a venv under /root), ``auto`` logs which directory blocks it and runs checks as the
    server's user, still within their limits; a user named explicitly is required
    (InvalidInput). ``none``: the server's own user.
    """
    euid = os.geteuid() if euid is None else euid
    value = setting.strip()
    auto = value.lower() == "auto"
    if value.lower() == "none" or (auto and euid != 0):
        return None
    try:
        user = ensure_system_user(CHECK_USER) if auto else JobUser.lookup(value)
    except KeyError:
        raise InvalidInput(f"check_user {value!r}: no such user") from None
    if user.uid == euid:
        return None
    problems = preflight(user, [], python)
    if not problems:
        return user
    reason = f"checks cannot run as {user.name!r}: {'; '.join(problems)}"
    if not auto:
        raise InvalidInput(reason)
    log.warning("%s; they run as this server's user, within their limits", reason)
    return None


class LimitedRunner:
    """Runs checks as :func:`run_limited` does, at most ``concurrency`` at a time (more
    callers wait their turn), as ``user``: a user, None (this process's), or a function
    that says which, called once, at the first check (creating a user is not a cost every
    server start pays)."""

    def __init__(
        self,
        *,
        user: JobUser | Callable[[], JobUser | None] | None = None,
        concurrency: int = 2,
        wrap: Callable[[list[str]], list[str]] | None = None,
        python: str = sys.executable,
    ) -> None:
        self._user = user
        self._resolved = not callable(user)
        self._lock = threading.Lock()
        self.wrap = wrap
        self.python = python
        self._slots = threading.BoundedSemaphore(max(1, concurrency))

    @property
    def user(self) -> JobUser | None:
        """Who checks run as (resolved on first use)."""
        with self._lock:
            if not self._resolved:
                assert callable(self._user)
                self._user = self._user()
                self._resolved = True
            assert not callable(self._user)
            return self._user

    def run(
        self,
        argv: Sequence[str],
        *,
        limits: Limits,
        inputs: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
    ) -> Outcome:
        """One check; blocks (off the event loop: callers run in a worker thread).
        Unavailable (503) when the child cannot be started at all."""
        user = self.user
        with self._slots:
            try:
                return run_limited(
                    argv,
                    limits=limits,
                    inputs=inputs,
                    user=user,
                    env=env,
                    wrap=self.wrap,
                    python=self.python,
                )
            except OSError as exc:
                raise Unavailable(f"a check could not be started: {exc}") from exc
