"""Job environments: the packages a job adds to the platform's, built with uv, kept by
content hash, shared by every job that asks for the same list.

- **Layered**: an environment is a directory of packages (``uv pip install --target``)
  that the job's interpreter, the platform's own, adds to its ``sys.path``
  (``NIMBUS_JOB_ENV``, read by :mod:`nimbus.runtime.entry`). torch, numpy and the Nimbus
  runtime stay the platform's: the resolve takes the platform's packages as constraints,
  and what the platform has is not installed again (:mod:`nimbus.jobs.envbuild`). Forked
  workers (warm sandboxes, the fork server) keep their preloaded modules.
- **Keyed** by :func:`~nimbus.jobs.requirements.environment_key`: the normalised list and
  the platform (Python version, its packages). Built once per node, then reused.
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
import fcntl
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbus.config import Settings
from nimbus.jobs.domain import Resources, parse_memory
from nimbus.jobs.executors.base import DEFAULT_PATH, OutputPump, OutputSink
from nimbus.jobs.isolation import JOB_UMASK
from nimbus.jobs.requirements import environment_key
from nimbus.jobs.sandbox import (
    AttemptSandbox,
    Sandbox,
    bwrap_argv,
    disk_usage,
    launcher_argv,
    seccomp_memfd,
)

log = logging.getLogger(__name__)
BUILDS_DIR = ".build"
LOCKS_DIR = ".locks"
RESULT_LIMIT = 4096  # bytes of the build's failure message kept


@dataclass(frozen=True)
class EnvironmentLimits:
    """How environments are built and kept, wherever they live: the control plane's
    settings, also sent to each Ray node's agent (which builds its node's own)."""

    max_bytes: int = 20 * 1024**3  # all environments together (LRU beyond)
    build_timeout: float = 1800.0
    index_url: str | None = None  # the package index (uv's default: PyPI)

    @classmethod
    def of(cls, settings: Settings) -> EnvironmentLimits:
        return cls(
            max_bytes=parse_memory(settings.job_env_max_size),
            build_timeout=settings.job_env_build_timeout_seconds,
            index_url=settings.job_env_index_url,
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

    @classmethod
    def at(cls, root: Path, limits: EnvironmentLimits) -> EnvironmentSettings:
        return cls(
            root,
            max_bytes=limits.max_bytes,
            build_timeout=limits.build_timeout,
            index_url=limits.index_url,
        )


def node_builds(settings: Settings, sandbox: Sandbox | None) -> Builds | None:
    """This node's job environments, per the settings. None on Ray: each Ray node's agent
    builds its own (:mod:`nimbus.jobs.executors.ray_remote`)."""
    if settings.executor == "ray":
        return None
    return Builds(
        EnvironmentSettings.at(settings.envs_dir, EnvironmentLimits.of(settings)), sandbox=sandbox
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


class BuildFailed(Exception):
    """The environment could not be built; the message says why (uv's own words)."""


class EnvironmentStore:
    """The built environments of this node: ``root/<key>``, root's, read-only to jobs."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root, self.max_bytes = Path(root), max_bytes
        for directory, mode in ((self.root, 0o711), (self.root / BUILDS_DIR, 0o711)):
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            os.chmod(directory, mode)  # listing it would tell which environments exist
        (self.root / LOCKS_DIR).mkdir(mode=0o700, exist_ok=True)

    def purge_builds(self, older_than: float) -> list[Path]:
        """Remove what builds that ended with their server left in ``.build`` (untouched
        for ``older_than`` seconds: longer than any build may run)."""
        cutoff = time.time() - older_than
        removed = []
        for entry in (self.root / BUILDS_DIR).iterdir():
            with contextlib.suppress(OSError):
                if entry.lstat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
        return removed

    def path(self, key: str) -> Path:
        return self.root / key

    def ready(self, key: str) -> bool:
        return self.path(key).is_dir()

    def touch(self, key: str) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path(key))

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the key's build lock (another process building it waits here)."""
        with open(self.root / LOCKS_DIR / f"{key}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def keys(self) -> list[str]:
        return [
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        ]

    def sizes(self) -> dict[str, int]:
        """Bytes each environment takes (a walk of every one: not under a lock)."""
        return {key: disk_usage(self.path(key))[0] for key in self.keys()}

    def victims(self, held: Sequence[str], sizes: dict[str, int] | None = None) -> list[str]:
        """The environments to remove for the rest to fit ``max_bytes``: the least recently
        used first, never one that ``held`` names (running attempts use them)."""
        sizes = self.sizes() if sizes is None else sizes
        total = sum(sizes.values())
        chosen = []
        for key in lru_order(sizes, {k: self._used_at(k) for k in sizes}):
            if total <= self.max_bytes:
                break
            if key in held:
                continue
            chosen.append(key)
            total -= sizes[key]
        return chosen

    def remove(self, key: str) -> None:
        """Out of its place at once (a rename), then deleted."""
        trash = self.root / BUILDS_DIR / f"removed-{key}-{secrets.token_hex(4)}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path(key), trash)
            shutil.rmtree(trash, ignore_errors=True)

    def _used_at(self, key: str) -> float:
        try:
            return self.path(key).stat().st_mtime
        except OSError:
            return 0.0


def lru_order(sizes: dict[str, int], used_at: dict[str, float]) -> list[str]:
    """Keys from the least recently used to the most (ties: the larger first)."""
    return sorted(sizes, key=lambda k: (used_at.get(k, 0.0), -sizes[k], k))


def take_over(target: Path, builder_uid: int) -> None:
    """Make a built environment the server's: root-owned, read-only to jobs (0755 / 0644,
    executables 0755). Anything but regular files, directories and symlinks, or not made
    by ``builder_uid``, or hard-linked, fails the build (it could be a file of someone
    else's, linked in)."""
    me, group = os.geteuid(), os.getegid()
    for top, dirs, files in os.walk(target):
        for name in [*dirs, *files]:
            path = os.path.join(top, name)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                raise BuildFailed(f"the build left a special file: {path}")
            if info.st_uid != builder_uid or (kind == stat.S_IFREG and info.st_nlink > 1):
                raise BuildFailed(f"the build left a file it did not make: {path}")
            os.lchown(path, me, group)
            if kind == stat.S_IFLNK:
                continue
            executable = kind == stat.S_IFDIR or info.st_mode & 0o100
            os.chmod(path, 0o755 if executable else 0o644)
    os.lchown(target, me, group)
    os.chmod(target, 0o755)


Runner = Callable[[Path, list[str], dict[str, str], OutputSink | None, float], int]
"""Runs the build program in a work directory: (workdir, argv, env, output, timeout) ->
its exit code (negative: a signal). The build's uid is recorded by :meth:`Builds.run`."""


class Builds:
    """Builds environments, once per key, on threads; hands them to attempts."""

    def __init__(
        self,
        settings: EnvironmentSettings,
        *,
        sandbox: Sandbox | None,
        pins: Callable[[str], tuple[str, ...]] = platform_pins,
    ) -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.store = EnvironmentStore(settings.root, settings.max_bytes)
        self.store.purge_builds(older_than=settings.build_timeout + 60)
        self._pins_of = pins
        self._pins: Future[tuple[str, ...]] | None = None
        self._lock = threading.Lock()
        self._building: dict[str, Future[None]] = {}
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

    def key(self, requirements: Sequence[str]) -> str:
        """The environment's key (waits for the platform's first read: see
        :meth:`platform_future`)."""
        return environment_key(requirements, self.platform())

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

    def request(
        self, key: str, requirements: Sequence[str], output: OutputSink | None
    ) -> tuple[Future[None], bool]:
        """The build of ``key`` (a failure raises :class:`BuildFailed` from its result),
        and whether this call started it (False: another attempt's build is shared)."""
        with self._lock:
            running = self._building.get(key)
            if running is not None:
                return running, False
            future = self._pool.submit(self._build, key, tuple(requirements), output)
            self._building[key] = future
            future.add_done_callback(lambda _: self._forget(key))
            return future, True

    def _forget(self, key: str) -> None:
        with self._lock:
            self._building.pop(key, None)

    def _build(self, key: str, requirements: tuple[str, ...], output: OutputSink | None) -> None:
        with self.store.locked(key):
            if self.store.ready(key):
                return
            work = self.store.root / BUILDS_DIR / f"{key}-{secrets.token_hex(4)}"
            work.mkdir(mode=0o700)
            try:
                self._build_in(work, key, requirements, output)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        self._evict(keep=key)

    def _build_in(
        self, work: Path, key: str, requirements: tuple[str, ...], output: OutputSink | None
    ) -> None:
        (work / "requirements.in").write_text("".join(f"{r}\n" for r in requirements))
        (work / "constraints.txt").write_text(
            "".join(f"{p}\n" for p in self.platform() if not p.startswith("python=="))
        )
        target, result = work / "env", work / "result.txt"
        argv = [
            self.settings.python,
            *("-m", "nimbus.jobs.envbuild", "--uv", self.settings.uv or uv_binary()),
            *("--python", self.settings.python, "--requirements", str(work / "requirements.in")),
            *("--constraints", str(work / "constraints.txt"), "--target", str(target)),
            *("--result", str(result)),
        ]
        started = time.monotonic()
        code, uid = self.run(work, argv, output)
        if code != 0:
            message = ""
            with contextlib.suppress(OSError), open(result, "rb") as failed:
                message = failed.read(RESULT_LIMIT).decode(errors="replace").strip()
            if code < 0 or not message:
                message = message or _ended(code, self.settings.build_timeout)
            raise BuildFailed(message)
        take_over(target, uid)
        os.rename(target, self.store.path(key))
        if output is not None:
            seconds = time.monotonic() - started
            output(f"nimbus: environment {key[:12]} built in {seconds:.1f}s\n")

    def run(self, work: Path, argv: list[str], output: OutputSink | None) -> tuple[int, int]:
        """Run the build program in ``work``: (exit code, the uid it ran as)."""
        env = {
            "PATH": DEFAULT_PATH,
            "LANG": "C.UTF-8",
            "HOME": str(work),
            "TMPDIR": str(work / ".tmp"),
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
