"""The sandbox each attempt runs in: bubblewrap namespaces, a uid of its own, a cgroup.

Every attempt gets:

- **its own uid** (:class:`UidPool`, from the ``job_uid_first``/``job_uid_count`` range)
  and its tenant's gid. The launcher drops to them *before* it execs ``bwrap``, so the
  user namespace bubblewrap makes maps to that unprivileged uid (as root, bwrap's user
  namespace would map to uid 0 outside, and root's 0600 files would be readable);
- **its own PID, mount, IPC, UTS and network namespaces** (``--unshare-all``,
  ``--die-with-parent``, ``--new-session``): it cannot see or signal other jobs, and
  when its main process ends the kernel kills everything left in the PID namespace;
- **a file system of its own**: read-only views of the system (``/usr``, ``/etc``...) and
  of the interpreter and the packages it imports; its work directory read-write; its
  tenant's download cache read-write (another tenant's cache is not in its view at all);
  a private ``/tmp`` (:data:`TMP_NAME` in its work directory: on disk, and counted with
  it against the disk limit) and ``/dev/shm`` (tmpfs, memory: it counts against the
  memory limit); nothing of NIMBUS_HOME besides (admin token, database, blob store are
  not there);
- **limits** through its cgroup (:mod:`nimbus.jobs.cgroups`): memory, processes, CPU; and
  a file size limit (``RLIMIT_FSIZE``) at the disk limit: writing past it kills the
  writer with SIGXFSZ, which ends the attempt with reason ``disk_limit``. A seccomp
  filter (:mod:`nimbus.jobs.seccomp`) keeps jobs from ignoring or catching that signal;
  the work directory's size (``/tmp`` included) is checked off the scheduler's thread
  while it runs and once more when it ends.

**The network** (:func:`network_argv`): none but a loopback of its own. The job reaches
the control plane's job API through a unix socket, the directory holding it
(``job_api_dir``) bound read-only at :data:`JOB_API_DIR` (the job's ``NIMBUS_URL`` is
:data:`JOB_API_URL`); nothing else of the host's network (the control plane's TCP port,
services on the host's loopback, the LAN) is in reach. The workers of one attempt share one
namespace (:class:`~nimbus.jobs.netns.SharedNetwork`, entered with ``nsenter`` before the
uid drops) and find each other on its 127.0.0.1 (``MASTER_ADDR``).

Launch order (:func:`launcher_argv`): ``sh`` as root writes its own pid into the
attempt's cgroups and sets the file size limit, then execs ``setpriv`` (drop to the
attempt's uid and gid, no supplementary groups, no capabilities), which execs ``bwrap``
(:func:`bwrap_argv`), which runs the program. Pure decisions are plain functions; the
:class:`Sandbox` does the I/O.
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
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nimbus.jobs import cgroups, seccomp
from nimbus.jobs.domain import Resources
from nimbus.jobs.netns import SharedNetwork

log = logging.getLogger(__name__)

NSENTER = "/usr/bin/nsenter"
BWRAP_INSTALL = "apt-get install bubblewrap (or `make services`)"
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DISK_LIMIT_EXIT = 128 + signal.SIGXFSZ  # what bwrap reports when its child got SIGXFSZ
FSIZE_BLOCK = 512  # unit of sh's ``ulimit -f``
PURGE_EVERY_SECONDS = 60.0  # kept work directories of failed attempts: looked at this often
JOB_API_DIR = "/run/nimbus"  # where a sandbox sees the directory of the job API's socket
JOB_API_SOCKET = "job-api.sock"
JOB_API_URL = f"unix:{JOB_API_DIR}/{JOB_API_SOCKET}"  # a sandboxed job's NIMBUS_URL
TMP_NAME = ".tmp"  # the attempt's /tmp, inside its work directory


@dataclass(frozen=True)
class SandboxSettings:
    """What every attempt's sandbox shares."""

    bwrap: str
    home: Path  # NIMBUS_HOME: kept out of every sandbox
    read_only: tuple[str, ...]  # the interpreter, its packages, the system
    symlinks: tuple[tuple[str, str], ...] = ()  # (path, target): /bin -> usr/bin...
    uid_first: int = 2_000_000_000
    uid_count: int = 65_536
    disk_limit_bytes: int = 20 * 1024**3
    pids_per_worker: int = 4096
    keep_failed_seconds: float = 86_400.0
    job_api_dir: Path | None = None  # holds the control plane's job API socket
    host_network: bool = False  # the host's network, not one of its own (see network_argv)
    environments: Path | None = None  # built job environments, read-only to every attempt

    def tenant_gid(self, tenant_id: int | None) -> int:
        """The group of a tenant's attempts and of its download cache: after the uid
        range, so no attempt's uid is ever another tenant's gid."""
        return self.uid_first + self.uid_count + (tenant_id or 0) % self.uid_count


@dataclass(frozen=True)
class NodeSandboxConfig:
    """The sandbox as the control plane's settings describe it, sent to every Ray node's
    agent, which makes its own from it (:mod:`nimbus.jobs.executors.ray_sandbox`)."""

    uid_first: int
    uid_count: int
    disk_limit_bytes: int
    pids_per_worker: int
    keep_failed_seconds: float
    warm: int = 1  # warm sandboxes kept ready per node (0: every attempt starts cold)
    reuse: bool = True  # one serves attempts of one affinity one after another (.warm)


@dataclass(frozen=True)
class AttemptView:
    """What one attempt's sandbox shows and who it runs as."""

    uid: int
    gid: int
    workdir: Path
    cache_dir: Path | None = None
    devices: tuple[str, ...] = ()  # GPU device nodes, when the attempt asked for GPUs
    netns: str | None = None  # the attempt's shared network namespace (several workers)


def covering(paths: Iterable[str]) -> tuple[str, ...]:
    """The existing absolute ``paths``, resolved, without those inside another one (bwrap
    binds each once). Order kept."""
    resolved: list[str] = []
    for raw in paths:
        if not raw or not os.path.isabs(raw) or not os.path.exists(raw):
            continue
        real = os.path.realpath(raw)
        if real not in resolved:
            resolved.append(real)
    return tuple(
        p
        for p in resolved
        if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in resolved)
    )


def top_symlinks(paths: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Those of ``paths`` that are symlinks (merged-/usr systems: ``/bin -> usr/bin``),
    with their targets: recreated in the sandbox, where :func:`covering` binds the
    targets."""
    return tuple((p, os.readlink(p)) for p in paths if os.path.islink(p))


def _inside(path: Path, roots: Iterable[str]) -> bool:
    return any(path == Path(r) or Path(r) in path.parents for r in roots)


def bwrap_argv(
    settings: SandboxSettings,
    view: AttemptView,
    program: Sequence[str],
    *,
    seccomp_fd: int | None = None,
) -> list[str]:
    """The ``bwrap`` command line that runs ``program`` in ``view``'s sandbox; with
    ``seccomp_fd``, under the filter bwrap reads from it (:func:`seccomp_memfd`)."""
    argv = [
        settings.bwrap,
        "--unshare-all",  # user, pid, mount, ipc, uts, cgroup and network namespaces
        "--die-with-parent",
        "--new-session",
        "--uid",
        str(view.uid),
        "--gid",
        str(view.gid),
        "--hostname",
        "nimbus-job",
        *network_argv(settings, view),
    ]
    for path in settings.read_only:
        argv += ["--ro-bind", path, path]
    for path, target in settings.symlinks:
        argv += ["--symlink", target, path]
    argv += ["--ro-bind-try", "/sys", "/sys", "--proc", "/proc", "--dev", "/dev"]
    for device in view.devices:
        argv += ["--dev-bind", device, device]
    # /tmp before the work directory: a work directory below /tmp stays in view.
    argv += ["--bind", str(view.workdir / TMP_NAME), "/tmp"]
    argv += ["--size", str(settings.disk_limit_bytes), "--tmpfs", "/dev/shm"]
    if _inside(settings.home, settings.read_only):
        argv += ["--tmpfs", str(settings.home)]  # hide it where a read-only view holds it
    if settings.environments is not None:  # after the tmpfs: it may be inside NIMBUS_HOME
        argv += ["--ro-bind", str(settings.environments), str(settings.environments)]
    argv += ["--bind", str(view.workdir), str(view.workdir)]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    if view.cache_dir is not None:
        argv += ["--bind", str(view.cache_dir), str(view.cache_dir)]
    argv += ["--chdir", str(view.workdir), "--", *program]
    return argv


def network_argv(settings: SandboxSettings, view: AttemptView) -> list[str]:
    """bwrap's network options: a loopback of the sandbox's own (``--unshare-all``), or
    the namespace the launcher entered (``view.netns``, shared by an attempt's workers), or
    the host's (``host_network``: the workers of one attempt on several Ray nodes, which
    reach each other over the network); and the job API's socket directory, read-only (see
    the module's docstring)."""
    shared = view.netns is not None or settings.host_network
    argv = ["--share-net"] if shared else []
    if settings.job_api_dir is not None:
        argv += ["--ro-bind", str(settings.job_api_dir), JOB_API_DIR]
    return argv


# The launcher: join the cgroups (as root: writing cgroup.procs needs it), cap file sizes,
# then exec the rest of the command line. Arguments: procs files..., "--", command...
_JOIN = (
    'fsize=$1; shift; while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; '
    'shift; ulimit -f "$fsize" || exit 125; exec "$@"'
)


def seccomp_memfd() -> int:
    """A fresh file descriptor holding the attempt's seccomp filter, at offset 0, for
    ``bwrap --seccomp`` (which reads it to the end: one per process started). The caller
    passes it to the child and closes it."""
    fd = os.memfd_create("nimbus-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, seccomp.program())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_tmp(workdir: Path, uid: int, gid: int) -> None:
    """The attempt's /tmp in its work directory, its own (sticky, like a /tmp), made
    afresh: one left by a warm sandbox that failed to start the attempt holds what bwrap
    made there for that sandbox's uid, which this attempt's uid could not write."""
    tmp = workdir / TMP_NAME
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    os.chown(tmp, uid, gid, follow_symlinks=False)
    os.chmod(tmp, 0o1700)


def launcher_argv(
    procs_files: Sequence[str],
    fsize_bytes: int,
    uid: int,
    gid: int,
    command: Sequence[str],
    *,
    netns: str | None = None,
) -> list[str]:
    """``sh`` joins the cgroups and caps file sizes, ``nsenter`` enters the network
    namespace ``netns`` if given (it needs root), ``setpriv`` drops to ``uid``/``gid`` for
    good (no supplementary groups, no capabilities), then ``command`` runs."""
    blocks = max(1, fsize_bytes // FSIZE_BLOCK)
    enter = [] if netns is None else [shutil.which("nsenter") or NSENTER, f"--net={netns}", "--"]
    setpriv = [
        shutil.which("setpriv") or "/usr/bin/setpriv",
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]
    return [
        *("/bin/sh", "-c", _JOIN, "sh", str(blocks), *procs_files, "--"),
        *(*enter, *setpriv, *command),
    ]


class UidPool:
    """Hands out one uid per attempt from ``[first, first + count)``; thread-safe."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count
        self._used: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            for step in range(self.count):
                uid = self.first + (self._next + step) % self.count
                if uid not in self._used:
                    self._used.add(uid)
                    self._next = (self._next + step + 1) % self.count  # not reused at once
                    return uid
        raise RuntimeError(f"all {self.count} job uids are in use")

    def release(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


def python_paths(python: str = sys.executable) -> tuple[str, ...]:
    """What the interpreter of jobs needs to read: its prefixes and ``sys.path`` as a job
    sees it (a scrubbed environment: no PYTHONPATH)."""
    done = subprocess.run(
        [
            python,
            "-c",
            "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, "
            "sys.exec_prefix, *sys.path]))",
        ],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    paths: list[str] = json.loads(done.stdout)
    return tuple([os.path.dirname(os.path.realpath(python)), *paths])


@dataclass
class AttemptSandbox:
    """One attempt's share of the sandbox: its uid, its cgroup, its view."""

    view: AttemptView
    cgroup: cgroups.AttemptCgroup | None
    network: SharedNetwork | None = None  # its workers' network namespace (several)

    def oom_killed(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_killed()


@dataclass
class Sandbox:
    """Makes and ends attempts' sandboxes (the I/O around the pure functions above)."""

    settings: SandboxSettings
    hierarchies: list[cgroups.Hierarchy] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)  # limits that are not enforced

    def __post_init__(self) -> None:
        self.uids = UidPool(self.settings.uid_first, self.settings.uid_count)
        self._purged_at = -PURGE_EVERY_SECONDS

    def enter(
        self,
        attempt_id: str,
        workdir: Path,
        resources: Resources,
        *,
        tenant_id: int | None,
        cache_dir: Path | None,
    ) -> AttemptSandbox:
        """Allocate the attempt's uid, hand it its work directory, create its cgroup and,
        for several workers, the network namespace they share."""
        uid = self.uids.acquire()
        gid = self.settings.tenant_gid(tenant_id)
        group = None
        try:
            os.chown(workdir, uid, gid, follow_symlinks=False)
            os.chmod(workdir, 0o700)
            for entry in workdir.iterdir():  # what the server put there (job.json): fresh,
                if entry.is_file() and not entry.is_symlink():  # no job has run here yet
                    os.chown(entry, uid, gid, follow_symlinks=False)
            make_tmp(workdir, uid, gid)
            if self.hierarchies:
                group = cgroups.AttemptCgroup(self.hierarchies, attempt_id)
                group.create(resources, pids_per_worker=self.settings.pids_per_worker)
            network = SharedNetwork.start() if resources.workers > 1 else None
        except BaseException:
            if group is not None:
                group.remove()
            self.uids.release(uid)
            raise
        devices = gpu_devices() if resources.gpus > 0 else ()
        netns = network.path if network is not None else None
        view = AttemptView(uid, gid, workdir, cache_dir, devices, netns)
        return AttemptSandbox(view, group, network)

    def command(
        self, attempt: AttemptSandbox, program: Sequence[str], *, seccomp_fd: int | None = None
    ) -> list[str]:
        """The full command line of one worker of ``attempt`` (``seccomp_fd`` from
        :func:`seccomp_memfd`, inherited by the worker)."""
        procs = attempt.cgroup.procs_files() if attempt.cgroup is not None else []
        inner = bwrap_argv(self.settings, attempt.view, program, seccomp_fd=seccomp_fd)
        view = attempt.view
        return launcher_argv(
            procs, self.settings.disk_limit_bytes, view.uid, view.gid, inner, netns=view.netns
        )

    def leave(self, attempt: AttemptSandbox) -> None:
        """Kill whatever of the attempt is left, remove its cgroup, free its uid."""
        if attempt.cgroup is not None:
            attempt.cgroup.remove()
        if attempt.network is not None:
            attempt.network.close()
        with _suppress_missing():
            os.chown(attempt.view.workdir, os.geteuid(), os.getegid(), follow_symlinks=False)
        self.uids.release(attempt.view.uid)

    def retire_workdir(self, workdir: Path, *, failed: bool) -> None:
        """An ended attempt's work directory: removed, or kept (the server's, 0700) for
        ``keep_failed_seconds`` when the attempt failed; older kept ones go now."""
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)
        now = time.monotonic()
        if now - self._purged_at >= PURGE_EVERY_SECONDS:  # a walk of every job's directory
            self._purged_at = now
            purge_workdirs(workdir.parent.parent, self.settings.keep_failed_seconds)

    def close(self) -> None:
        """Remove this instance's cgroup directories if no attempt is left in them."""
        for h in self.hierarchies:
            with contextlib.suppress(OSError):
                h.base.rmdir()

    def leftovers(self) -> list[str]:
        """Attempt ids whose cgroup a previous run of this instance left behind."""
        names: set[str] = set()
        for h in self.hierarchies:
            try:
                names.update(p.name for p in h.base.iterdir() if p.is_dir())
            except OSError:
                continue
        return sorted(names)

    def kill_leftover(self, attempt_id: str) -> None:
        cgroups.AttemptCgroup(self.hierarchies, attempt_id).remove()


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, FileNotFoundError)


def disk_usage(directory: Path) -> tuple[int, int]:
    """(bytes allocated, size of the largest file) under ``directory``; sparse files
    count by what they allocate, symlinks not followed."""
    total = largest = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(root, name))
                total += info.st_blocks * 512
                largest = max(largest, info.st_size)
    return total, largest


def over_disk_limit(usage: tuple[int, int], limit: int) -> bool:
    """Whether a work directory's usage (:func:`disk_usage`) hit the disk limit: in all,
    or one file stopped at it by ``RLIMIT_FSIZE`` (Python ignores SIGXFSZ: the write
    fails with EFBIG instead of killing the job)."""
    total, largest = usage
    return total >= limit or largest >= limit


def purge_workdirs(jobs_root: Path, older_than: float, now: float | None = None) -> list[Path]:
    """Remove attempts' work directories (``<jobs_root>/<job>/<attempt>``) untouched for
    ``older_than`` seconds, and job directories left empty; returns those removed."""
    cutoff = (time.time() if now is None else now) - older_than
    removed = []
    for job in _subdirs(jobs_root):
        for attempt in _subdirs(job):
            with contextlib.suppress(OSError):
                if attempt.lstat().st_mtime < cutoff:
                    shutil.rmtree(attempt, ignore_errors=True)
                    removed.append(attempt)
        with contextlib.suppress(OSError):
            if job.lstat().st_mtime < cutoff:
                job.rmdir()  # only when empty
    return removed


def _subdirs(directory: Path) -> list[Path]:
    # Not the dot-directories: job ids never start with one, warm sandboxes' directories
    # (``.warm``) do, and those are in use however old they are.
    try:
        return [
            p
            for p in directory.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
        ]
    except OSError:
        return []


def gpu_devices() -> tuple[str, ...]:
    """The NVIDIA device nodes of this machine (an attempt with GPUs needs them)."""
    dev = Path("/dev")
    return tuple(sorted(str(p) for p in dev.glob("nvidia*") if not p.is_dir()))
