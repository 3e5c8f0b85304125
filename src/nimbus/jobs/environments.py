"""Job environments: the packages a job adds to the platform's, resolved once per job,
built with uv, kept by the content hash of the lock, shared by every job whose
requirements resolve to the same pins.

- **Layered**: an environment is a directory of packages (``uv pip install --target``)
  that the job's interpreter, the platform's own, adds to its ``sys.path``
  (``NIMBUS_JOB_ENV``, read by :mod:`nimbus.runtime.entry`). torch, numpy and the Nimbus
  runtime stay the platform's: the resolve takes the platform's packages as constraints,
  and what the platform has is not installed again (:mod:`nimbus.jobs.envbuild`). Forked
  workers (warm sandboxes, the fork server) keep their preloaded modules.
- **Resolved once per job** (:meth:`Builds.resolve`: ``uv pip compile`` in the sandbox,
  as a job uid), into a lock recorded with the job (:mod:`nimbus.jobs.envlock`): its
  retries and every Ray node install exactly that. A node remembers what each list
  resolved to for a time to live, so a list asked for again is not resolved again.
- **Keyed** by :func:`~nimbus.jobs.requirements.environment_key`: the lock and the
  platform (Python version, its packages). Built once per node, then reused.
- **Built as an unprivileged uid**, in the attempts' sandbox (a uid of the job range, a
  cgroup, the same read-only view), with the host's network (the index must be reached)
  but not the job API socket, and nothing of NIMBUS_HOME but its own directory. Once the
  build ends, the server takes the result over: owned by root, read-only to every job,
  and only regular files, directories and symlinks made by the build's uid are kept.
  Without the sandbox (``NIMBUS_JOB_ISOLATION=none``) it runs as the server's user, and a
  server that runs as root refuses to build.
- **One build per key**: the first job's build is shared by every job asking for the same
  key meanwhile (and a file lock keeps two processes from building it at once).
- **LRU**: past ``max_bytes`` in all, the least recently used environments that no
  running attempt holds are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbus.config import Settings
from nimbus.jobs.domain import Resources, parse_memory
from nimbus.jobs.envlock import MAP_DIR, BadLock, Lock, ResolvedLocks, parse_lock
from nimbus.jobs.envstore import (
    BUILDS_DIR,
    BuildFailed,
    EnvironmentStore,
    lru_order,
    take_over,
)
from nimbus.jobs.executors.base import DEFAULT_PATH, JOB_USER, OutputPump, OutputSink
from nimbus.jobs.isolation import JOB_UMASK
from nimbus.jobs.requirements import environment_key
from nimbus.jobs.sandbox import AttemptSandbox, Sandbox, bwrap_argv, launcher_argv, seccomp_memfd

__all__ = ["BuildFailed", "Builds", "EnvironmentStore", "lru_order", "take_over"]
log = logging.getLogger(__name__)
RESULT_LIMIT = 4096  # bytes of the build's failure message kept


@dataclass(frozen=True)
class EnvironmentLimits:
    """How environments are built and kept, wherever they live: the control plane's
    settings, also sent to each Ray node's agent (which builds its node's own)."""

    max_bytes: int = 20 * 1024**3  # all environments together (LRU beyond)
    build_timeout: float = 1800.0
    index_url: str | None = None  # the package index (uv's default: PyPI)
    resolve_ttl: float = 86_400.0  # how long a list's lock is reused without a resolve

    @classmethod
    def of(cls, settings: Settings) -> EnvironmentLimits:
        return cls(
            max_bytes=parse_memory(settings.job_env_max_size),
            build_timeout=settings.job_env_build_timeout_seconds,
            index_url=settings.job_env_index_url,
            resolve_ttl=settings.job_env_resolve_ttl_seconds,
        )


@dataclass(frozen=True)
class EnvironmentSettings:
    """Where environments live and how they are built."""

    root: Path  # NIMBUS_HOME/envs
    max_bytes: int = 20 * 1024**3  # all environments together (LRU beyond)
    build_timeout: float = 1800.0
    build_memory_bytes: int = 4 * 1024**3
    build_cpus: float = 2.0
    index_url: str | None = None  # the package index (uv's default: PyPI)
    python: str = sys.executable  # the jobs' interpreter
    uv: str | None = None  # the uv binary (default: the one of the uv package)
    resolve_ttl: float = 86_400.0  # the requested→lock map's time to live

    @classmethod
    def at(cls, root: Path, limits: EnvironmentLimits) -> EnvironmentSettings:
        return cls(
            root,
            max_bytes=limits.max_bytes,
            build_timeout=limits.build_timeout,
            index_url=limits.index_url,
            resolve_ttl=limits.resolve_ttl,
        )


def node_builds(settings: Settings, sandbox: Sandbox | None, refused: str | None = None) -> Builds:
    """This node's job environments, per the settings. On Ray the control plane only
    resolves (each Ray node's agent builds its own from the lock:
    :mod:`nimbus.jobs.executors.ray_remote`). ``refused``: why no resolve or build may
    run here (isolation was asked for and cannot engage)."""
    return Builds(
        EnvironmentSettings.at(settings.envs_dir, EnvironmentLimits.of(settings)),
        sandbox=sandbox,
        refused=refused,
    )


def uv_binary() -> str:
    """The ``uv`` executable of the ``uv`` package (a dependency of Nimbus)."""
    import uv

    return str(uv.find_uv_bin())


def platform_pins(python: str) -> tuple[str, ...]:
    """``NAME==VERSION`` of every package ``python`` has (local version labels dropped:
    the index knows only public versions), and its version: the platform an environment
    is layered on, and its constraints."""
    code = (
        "import importlib.metadata as m, sys\n"
        "from packaging.version import InvalidVersion, Version\n"
        "pins = set()\n"
        "for d in m.distributions():\n"
        "    try:\n"
        "        pins.add(f\"{d.metadata['Name']}=={Version(d.version).public}\")\n"
        "    except (InvalidVersion, TypeError, KeyError):\n"
        "        pass\n"
        "print(sys.version.split()[0])\n"
        "print('\\n'.join(sorted(pins)))\n"
    )
    done = subprocess.run(
        [python, "-c", code],
        env={"PATH": DEFAULT_PATH},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    version, *pins = done.stdout.split("\n")
    return (f"python=={version}", *(p for p in pins if p))


class Builds:
    """Resolves requirements into locks and builds environments from locks, once per
    key, on threads; hands them to attempts."""

    def __init__(
        self,
        settings: EnvironmentSettings,
        *,
        sandbox: Sandbox | None,
        pins: Callable[[str], tuple[str, ...]] = platform_pins,
        refused: str | None = None,
    ) -> None:
        self.settings = settings
        self.sandbox, self.refused = sandbox, refused
        self.store = EnvironmentStore(settings.root, settings.max_bytes)
        self.store.purge_builds(older_than=settings.build_timeout + 60)
        self._pins_of = pins
        self._pins: Future[tuple[str, ...]] | None = None
        self._lock = threading.Lock()
        self._building: dict[str, Future[None]] = {}
        self._resolving: dict[tuple[str, ...], Future[Lock]] = {}
        self.locks = ResolvedLocks(settings.root / MAP_DIR, settings.resolve_ttl)
        self._held: Counter[str] = Counter()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="env-build")
        self._procs: set[int] = set()  # process groups of builds under way
        self.last_uid: int | None = None  # the uid the last build ran as (reported)

    def platform_future(self) -> Future[tuple[str, ...]]:
        """The platform's packages (:func:`platform_pins`), read once, on a thread of its
        own: reading them runs the interpreter (~1 s), which no scheduler's tick waits
        for. Done at once after the first read; a read that failed is tried again."""
        with self._lock:
            future = self._pins
            if future is None or (future.done() and future.exception() is not None):
                future = self._pins = Future()
                threading.Thread(
                    target=self._read_platform, args=(future,), name="env-platform", daemon=True
                ).start()
            return future

    def _read_platform(self, future: Future[tuple[str, ...]]) -> None:
        try:
            future.set_result(self._pins_of(self.settings.python))
        except Exception as exc:
            future.set_exception(exc)

    def platform(self) -> tuple[str, ...]:
        """The platform's packages (waits for their first read)."""
        return self.platform_future().result()

    def key(self, lock: Lock) -> str:
        """The environment's key: the lock's hash with this node's platform (waits for
        the platform's first read: see :meth:`platform_future`)."""
        return environment_key(lock, self.platform())

    def resolved(self, requirements: Sequence[str]) -> tuple[Lock, float] | None:
        """The lock ``requirements`` resolved to on this node within the TTL, and its age
        in seconds (no resolve needed), or None."""
        return self.locks.get(requirements, self.platform())

    def resolve(
        self, requirements: Sequence[str], output: OutputSink | None
    ) -> tuple[Future[Lock], bool]:
        """The resolve of ``requirements`` into a lock (a failure raises
        :class:`BuildFailed` from its result), kept in the requested→lock map; and whether
        this call started it (False: another attempt's resolve of the list is shared)."""
        wanted = tuple(requirements)
        with self._lock:
            running = self._resolving.get(wanted)
            if running is not None:
                return running, False
            future = self._pool.submit(self._resolve, wanted, output)
            self._resolving[wanted] = future
            future.add_done_callback(lambda _: self._resolving.pop(wanted, None))
            return future, True

    def _resolve(self, requirements: tuple[str, ...], output: OutputSink | None) -> Lock:
        work = self.store.root / BUILDS_DIR / f"resolve-{secrets.token_hex(8)}"
        work.mkdir(mode=0o700)
        try:
            (work / "requirements.in").write_text("".join(f"{r}\n" for r in requirements))
            self._write_constraints(work)
            lock_file = work / "lock.txt"
            self._step(work, "resolve", output, "--requirements", str(work / "requirements.in"))
            try:
                lock = parse_lock(lock_file.read_text().splitlines())
            except (OSError, BadLock) as exc:
                raise BuildFailed(f"the resolve wrote no usable lock: {exc}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        self.locks.put(requirements, self.platform(), lock)
        return lock

    def hold(self, key: str) -> bool:
        """Hold the environment for an attempt if it is built (True); :meth:`release`
        after the attempt. A held environment is never evicted."""
        with self._lock:
            if not self.store.ready(key):
                return False
            self._held[key] += 1
        self.store.touch(key)
        return True

    def release(self, key: str) -> None:
        with self._lock:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]

    def request(self, key: str, lock: Lock, output: OutputSink | None) -> tuple[Future[None], bool]:
        """The build of ``key`` from ``lock`` (a failure raises :class:`BuildFailed` from
        its result), and whether this call started it (False: another attempt's build is
        shared)."""
        with self._lock:
            running = self._building.get(key)
            if running is not None:
                return running, False
            future = self._pool.submit(self._build, key, tuple(lock), output)
            self._building[key] = future
            future.add_done_callback(lambda _: self._forget(key))
            return future, True

    def _forget(self, key: str) -> None:
        with self._lock:
            self._building.pop(key, None)

    def _build(self, key: str, lock: Lock, output: OutputSink | None) -> None:
        with self.store.locked(key):
            if self.store.ready(key):
                return
            work = self.store.root / BUILDS_DIR / f"{key}-{secrets.token_hex(4)}"
            work.mkdir(mode=0o700)
            try:
                self._build_in(work, key, lock, output)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        self._evict(keep=key)

    def _build_in(self, work: Path, key: str, lock: Lock, output: OutputSink | None) -> None:
        (work / "lock.txt").write_text("".join(f"{pin}\n" for pin in lock))
        self._write_constraints(work)
        started = time.monotonic()
        uid = self._step(work, "install", output, "--target", str(work / "env"))
        take_over(work / "env", uid)
        os.rename(work / "env", self.store.path(key))
        if output is not None:
            seconds = time.monotonic() - started
            output(f"nimbus: environment {key[:12]} built in {seconds:.1f}s\n")

    def _write_constraints(self, work: Path) -> None:
        (work / "constraints.txt").write_text(
            "".join(f"{p}\n" for p in self.platform() if not p.startswith("python=="))
        )

    def _step(self, work: Path, step: str, output: OutputSink | None, *args: str) -> int:
        """Run one step of :mod:`nimbus.jobs.envbuild` in ``work`` (its ``lock.txt``, its
        ``constraints.txt``); the uid it ran as, or :class:`BuildFailed` saying why not."""
        result = work / "result.txt"
        argv = [
            self.settings.python,
            *("-m", "nimbus.jobs.envbuild", step, "--uv", self.settings.uv or uv_binary()),
            *("--python", self.settings.python, "--lock", str(work / "lock.txt")),
            *("--constraints", str(work / "constraints.txt"), "--result", str(result), *args),
        ]
        code, uid = self.run(work, argv, output)
        if code != 0:
            message = ""
            with contextlib.suppress(OSError), open(result, "rb") as failed:
                message = failed.read(RESULT_LIMIT).decode(errors="replace").strip()
            if code < 0 or not message:
                message = message or _ended(code, self.settings.build_timeout)
            raise BuildFailed(message)
        return uid

    def run(self, work: Path, argv: list[str], output: OutputSink | None) -> tuple[int, int]:
        """Run the build program in ``work``: (exit code, the uid it ran as)."""
        env = {
            "PATH": DEFAULT_PATH,
            "LANG": "C.UTF-8",
            "HOME": str(work),
            "TMPDIR": str(work / ".tmp"),
            **JOB_USER,
            "PYTHONUNBUFFERED": "1",
            "UV_CACHE_DIR": str(work / ".tmp" / "uv-cache"),
            "UV_LINK_MODE": "copy",  # never a hard link into the cache: see take_over
            "UV_PYTHON_DOWNLOADS": "never",
            # The machine's certificate store (where an admin puts a proxy's CA), not uv's
            # bundled roots: UV_SYSTEM_CERTS, and its older name.
            "UV_SYSTEM_CERTS": "1",
            "UV_NATIVE_TLS": "1",
            "NO_COLOR": "1",
        }
        if self.settings.index_url:
            env["UV_DEFAULT_INDEX"] = self.settings.index_url
        if self.refused is not None:
            raise BuildFailed(self.refused)
        if self.sandbox is None:
            if os.geteuid() == 0:
                raise BuildFailed(
                    "this server runs as root without the job sandbox "
                    "(NIMBUS_JOB_ISOLATION=none): environments are never built as root"
                )
            (work / ".tmp").mkdir(mode=0o700, exist_ok=True)
            return self._spawn(argv, env, output, {}), os.geteuid()
        resources = Resources(
            cpus=self.settings.build_cpus, memory_bytes=self.settings.build_memory_bytes
        )
        attempt = self.sandbox.enter(
            f"envbuild-{work.name}", work, resources, tenant_id=None, cache_dir=None
        )
        try:
            return self._sandboxed(attempt, argv, env, output), attempt.view.uid
        finally:
            self.sandbox.leave(attempt)

    def _sandboxed(
        self,
        attempt: AttemptSandbox,
        argv: list[str],
        env: dict[str, str],
        output: OutputSink | None,
    ) -> int:
        assert self.sandbox is not None
        # The attempts' sandbox, with the host's network (the index) and no job API.
        settings = dataclasses.replace(self.sandbox.settings, host_network=True, job_api_dir=None)
        seccomp_fd = seccomp_memfd()
        try:
            inner = bwrap_argv(settings, attempt.view, argv, seccomp_fd=seccomp_fd)
            procs = attempt.cgroup.procs_files() if attempt.cgroup is not None else []
            view = attempt.view
            command = launcher_argv(procs, settings.disk_limit_bytes, view.uid, view.gid, inner)
            return self._spawn(
                command, env, output, {"umask": JOB_UMASK, "pass_fds": (seccomp_fd,)}, attempt
            )
        finally:
            os.close(seccomp_fd)

    def _spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        output: OutputSink | None,
        extra: dict[str, Any],
        attempt: AttemptSandbox | None = None,
    ) -> int:
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=env["HOME"],
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
        pump = OutputPump(read_fd, output)
        pump.start()
        with self._lock:
            self._procs.add(proc.pid)
        try:
            return proc.wait(timeout=self.settings.build_timeout)
        except subprocess.TimeoutExpired:
            _kill(proc.pid, attempt)
            return proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc.pid)
            pump.join(timeout=5)

    def _evict(self, keep: str) -> None:
        sizes = self.store.sizes()  # the walk, outside the lock that hold() takes
        with self._lock:
            held = [*self._held, keep]
            victims = self.store.victims(held, sizes)
            for key in victims:
                self.store.remove(key)
        if victims:
            log.info("removed %d least recently used job environment(s)", len(victims))

    def close(self) -> None:
        """Kill the builds under way (their jobs end with the server) and stop."""
        with self._lock:
            pids = list(self._procs)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self._pool.shutdown(wait=True, cancel_futures=True)


def _kill(pid: int, attempt: AttemptSandbox | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if attempt is not None and attempt.cgroup is not None:
        attempt.cgroup.kill(timeout=0)


def _ended(code: int, timeout: float) -> str:
    if code == -signal.SIGKILL:
        return f"the build was killed (over {timeout:.0f}s, or out of memory)"
    return f"the build exited with {code}"
