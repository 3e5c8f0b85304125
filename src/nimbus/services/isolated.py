"""Checks of untrusted input (a script to compile, an ONNX graph to run) in a limited child
process, never in the control plane's own: a hostile input can then cost a child its time
and memory, not the server its event loop, its memory or its secrets.

:func:`run_limited` is the one way to do it. The child:

- runs ``argv`` through a tiny launcher (``python -I -S -c``) that moves the input files to
  fds 3, 4, ... (in the order given; the child reads them there, never by path), sets its
  resource limits (address space, CPU seconds, file size, open files, no core dumps) and
  then ``exec``\\ s ``argv``: no ``preexec_fn``, which is unsafe in a threaded server;
- runs in the job sandbox when its :class:`Confinement` has one (a server's always does,
  unless ``NIMBUS_JOB_ISOLATION=none``): bubblewrap as the check user (``check_user``:
  ``nimbus-check``), no network, nothing of the host's file system but the system and the
  interpreter, read-only (no NIMBUS_HOME: no admin token, database or blobs), and a cgroup
  of its own with a memory limit for all its processes together, a process limit and one
  CPU; the cgroup is killed when the check ends. Its inputs are open fds, so it needs no
  path to them. A server that cannot sandbox refuses checks (503, saying why) rather than
  running them as itself;
- gets a scrubbed environment (``PATH``, ``HOME``/``TMPDIR``, ``LANG``, one thread for
  numerical libraries) and a private, empty working directory (0700, its own), removed
  after;
- is its own session and process group, killed whole (SIGKILL) at the wall-clock limit
  and once it has exited (nothing it forked lingers in its group);
- writes stdout and stderr to unnamed files, bounded by its file-size limit, read back at
  the end (a check prints one JSON object on stdout: see :func:`json_reply`).

:class:`LimitedRunner` holds what a server decides once (where checks run, how many run at
a time) and bounds concurrency, so a burst of uploads queues instead of forking without end.

The launcher runs inside the sandbox (``sh`` joins the cgroup, ``setpriv`` drops to the
check user, ``bwrap`` starts it: :func:`nimbus.jobs.sandbox.launcher_argv`), so the rlimits,
the fd layout and the reply contract are the same sandboxed or not.

Where rlimits do not reach (unsandboxed only): RLIMIT_AS bounds one process, not a process
tree, and a process that calls ``setsid`` leaves the group that is killed; the sandbox's
cgroup (memory and processes of the whole tree, ``cgroup.kill``) and PID namespace close
both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nimbus.errors import InvalidInput, Unavailable
from nimbus.jobs import cgroups
from nimbus.jobs.domain import Resources
from nimbus.jobs.isolation import NO_ISOLATION, Isolation, JobUser
from nimbus.jobs.sandbox import AttemptView, Sandbox, bwrap_argv, launcher_argv, make_tmp

log = logging.getLogger(__name__)

FIRST_INPUT_FD = 3
OPEN_FILES = 256
TIME, CPU, MEMORY = "time", "cpu", "memory"  # which limit ended a child (Outcome.limit)
OOM_POLL_SECONDS = 0.1  # how often a sandboxed check's cgroup is asked for OOM kills
CHECK_USER = "nimbus-check"  # not the job user: running jobs must not reach the checks
CHECK_PIDS = 64  # processes and threads of one sandboxed check, all together
# What a sandboxed check needs, imported for real when the sandbox is first tried.
CHECK_PROBE = "import nimbus.modelformat, numpy"

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


@dataclass(frozen=True)
class Confinement:
    """Where checks run: in ``sandbox`` as ``user``; nowhere (``refused`` says why); or,
    with neither, unsandboxed as this process's user (``NIMBUS_JOB_ISOLATION=none``)."""

    sandbox: Sandbox | None = None
    user: JobUser | None = None
    refused: str | None = None


def run_limited(
    argv: Sequence[str],
    *,
    limits: Limits,
    inputs: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    confinement: Confinement | None = None,
    python: str = sys.executable,
) -> Outcome:
    """Run ``argv`` in a limited child (see the module's docstring) and wait for it.

    ``inputs`` are opened here, read-only, and reach the child as fds 3, 4, ... in order;
    ``env`` adds to (or overrides) the scrubbed environment; ``confinement`` (default: none)
    says where it runs. Raises OSError only when the child cannot be started.
    """
    confinement = confinement or Confinement()
    if confinement.refused is not None:
        raise OSError(f"checks are refused: {confinement.refused}")
    workdir = Path(tempfile.mkdtemp(prefix="nimbus-check-"))
    try:
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
            group = None
            if confinement.sandbox is not None and confinement.user is not None:
                command, group = stack.enter_context(
                    _sandboxed(confinement.sandbox, confinement.user, command, workdir, limits)
                )
            started = time.monotonic()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir,
                env={**_environment(workdir), **(env or {})},
                pass_fds=fds,
                start_new_session=True,
            )
            limit = _wait(proc, limits.wall_seconds, group)
            seconds = time.monotonic() - started
            if limit is None and proc.returncode == -signal.SIGXCPU:
                limit = CPU
            if limit is None and group is not None and group.oom_killed():
                limit = MEMORY
            return Outcome(proc.returncode, _read(out), _read(err), limit, seconds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def _sandboxed(
    sandbox: Sandbox, user: JobUser, command: list[str], workdir: Path, limits: Limits
) -> Iterator[tuple[list[str], cgroups.AttemptCgroup | None]]:
    """``command`` as the job sandbox runs it, as ``user``, in a cgroup of its own (killed
    and removed on exit) holding ``limits.memory_bytes`` for the whole tree; its work
    directory its only writable place, and no job API socket."""
    os.chown(workdir, user.uid, user.gid)
    os.chmod(workdir, 0o700)
    make_tmp(workdir, user.uid, user.gid)  # the sandbox's /tmp lives in the work directory
    group = None
    if sandbox.hierarchies:
        group = cgroups.AttemptCgroup(sandbox.hierarchies, f"check-{secrets.token_hex(8)}")
        one = Resources(cpus=1, memory_bytes=limits.memory_bytes, workers=1)
        try:
            group.create(one, pids_per_worker=CHECK_PIDS)
        except BaseException:
            group.remove()
            raise
    try:
        settings = dataclasses.replace(sandbox.settings, job_api_dir=None)
        inner = bwrap_argv(settings, AttemptView(user.uid, user.gid, workdir), command)
        procs = group.procs_files() if group is not None else []
        yield launcher_argv(procs, limits.output_bytes, user.uid, user.gid, inner), group
    finally:
        if group is not None:
            group.remove()


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


def _wait(
    proc: subprocess.Popen[bytes], seconds: float, group: cgroups.AttemptCgroup | None
) -> str | None:
    """Wait up to ``seconds``; kill the child's whole group then, and in any case once it
    ended. Returns :data:`TIME` when the wall-clock limit ended it, :data:`MEMORY` when
    the kernel killed a process of its cgroup for memory: the OOM killer takes one
    process at a time, and a check that hit its limit is over, so the rest die with it."""
    limit = None
    deadline = time.monotonic() + seconds
    while limit is None:
        try:
            proc.wait(timeout=min(OOM_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            break
        except subprocess.TimeoutExpired:
            if group is not None and group.oom_killed():
                limit = MEMORY
                group.kill()
            elif time.monotonic() >= deadline:
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


def resolve_check_user(setting: str, *, euid: int | None = None) -> JobUser | None:
    """The user checks run as, per the ``check_user`` setting: ``auto`` on a root server
    the system user :data:`CHECK_USER` (created if missing), a user name that user; None:
    this server's own (``none``, or ``auto`` on a server that is not root). InvalidInput
    for a user that does not exist."""
    euid = os.geteuid() if euid is None else euid
    value = setting.strip()
    auto = value.lower() == "auto"
    if value.lower() == "none" or (auto and euid != 0):
        return None
    try:
        user = ensure_system_user(CHECK_USER) if auto else JobUser.lookup(value)
    except KeyError:
        raise InvalidInput(f"check_user {value!r}: no such user") from None
    return None if user.uid == euid else user


def confine_checks(
    mode: str,
    check_user: str,
    sandbox_for: Callable[[JobUser], Isolation],
    *,
    euid: int | None = None,
) -> Confinement:
    """Where a server's checks run: in the job sandbox as the check user, made by
    ``sandbox_for`` (which tries it for real: :func:`nimbus.jobs.isolation.check_sandbox`);
    refused, saying why, when it cannot be; unsandboxed only when the job isolation
    ``mode`` is ``none``, and then said in the log. Never the server's own user otherwise."""
    if mode.strip().lower() == NO_ISOLATION:
        log.warning(
            "checks of uploaded scripts and models run UNSANDBOXED as this server's user "
            "(NIMBUS_JOB_ISOLATION=none), within their rlimits"
        )
        return Confinement()
    fix = "or set NIMBUS_JOB_ISOLATION=none on a single-user machine"
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return Confinement(
            refused=f"checks of uploads run in the job sandbox, which needs a server started "
            f"as root; this one runs as uid {euid}: start it as root, {fix}"
        )
    try:
        user = resolve_check_user(check_user, euid=euid)
    except InvalidInput as exc:
        return Confinement(refused=str(exc))
    if user is None:
        return Confinement(
            refused=f"check_user {check_user!r} would run checks as this server's own user: "
            f"name another user (or 'auto'), {fix}"
        )
    isolation = sandbox_for(user)
    if isolation.sandbox is None:
        return Confinement(refused=isolation.refused or "the sandbox cannot engage")
    for name in isolation.sandbox.leftovers():  # of a crashed run: no check runs yet
        isolation.sandbox.kill_leftover(name)
    return Confinement(isolation.sandbox, user)


class LimitedRunner:
    """Runs checks as :func:`run_limited` does, at most ``concurrency`` at a time (more
    callers wait their turn), confined as ``confinement`` says: a :class:`Confinement`
    (default: none, unsandboxed), or a function that says which, called once, at the first
    check (trying the sandbox is not a cost every server start pays)."""

    def __init__(
        self,
        *,
        confinement: Confinement | Callable[[], Confinement] | None = None,
        concurrency: int = 2,
        python: str = sys.executable,
    ) -> None:
        self._confinement = confinement if confinement is not None else Confinement()
        self._lock = threading.Lock()
        self.python = python
        self._slots = threading.BoundedSemaphore(max(1, concurrency))

    @property
    def confinement(self) -> Confinement:
        """Where checks run (resolved on first use)."""
        with self._lock:
            if callable(self._confinement):
                self._confinement = self._confinement()
                if self._confinement.refused is not None:
                    log.error("no check of uploads will run: %s", self._confinement.refused)
            return self._confinement

    def run(
        self,
        argv: Sequence[str],
        *,
        limits: Limits,
        inputs: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
    ) -> Outcome:
        """One check; blocks (off the event loop: callers run in a worker thread).
        Unavailable (503) when the child cannot be started at all, or checks are refused
        (the sandbox cannot engage)."""
        confinement = self.confinement
        if confinement.refused is not None:
            raise Unavailable(f"checks of uploads are refused: {confinement.refused}")
        with self._slots:
            try:
                return run_limited(
                    argv,
                    limits=limits,
                    inputs=inputs,
                    env=env,
                    confinement=confinement,
                    python=self.python,
                )
            except OSError as exc:
                raise Unavailable(f"a check could not be started: {exc}") from exc
