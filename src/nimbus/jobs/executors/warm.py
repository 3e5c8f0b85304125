"""Warm sandboxes: the fork server's warm start, inside the sandbox.

A *warm sandbox* is an attempt's sandbox (:mod:`nimbus.jobs.sandbox`) started before its
attempt is known, with a zygote (:mod:`.zygote`) in it that already imported the heavy
modules (torch, the runtime). One attempt at a time claims it. It ends with that attempt,
unless the next attempt to claim it has the same *affinity* (see "One attempt after
another" below): never across tenants, submitters, code or data. What bubblewrap fixes when
it starts is chosen ahead and handed over at the claim:

- **uid**: taken from the sandbox's uid pool when the warm sandbox starts; the attempt's
  once claimed, freed when the attempt ends.
- **tenant** (the gid, the tenant's download cache in view, GPU device nodes): a warm
  sandbox is started *for* a tenant, one whose attempts ran recently
  (:func:`warm_targets`). An attempt with no warm sandbox of its tenant ready waits for
  one that is starting for its tenant (its imports are under way; a cold start's would
  begin), else starts cold; a replacement starts at once for the tenant's next attempt,
  several at a time (a study's or a burst's attempts are not served one import after
  another).
- **work directory**: an empty directory of its own, ``<jobs root>/.warm/<name>``, is
  bound in. At the claim the server moves what it put in the attempt's directory
  (``job.json``) into it and renames it onto the attempt's directory: the attempt's files
  are where every attempt's are. Inside, the job sees it where it was bound; its HOME,
  TMPDIR and NIMBUS_JOB_DIR say that path.
- **cgroup**: the warm sandbox's processes are in a cgroup of their own from the start
  (the launcher joins it before it execs bwrap). At the claim the attempt's limits
  (memory, processes, CPU) are written there before any of the job's code runs; at its
  end the cgroup is killed whole, as every attempt's. Until the claim it runs at the lowest
  CPU weight while another warm sandbox of its tenant is ready (:func:`in_background`): its
  imports take the CPU time running attempts leave idle, not theirs. Started when none is
  ready, or awaited by an attempt, it runs at one CPU's weight: the tenant's next attempt
  would otherwise do the same imports cold, at its own weight, after it was queued. What
  the imports took counts against the attempt's memory limit, as it would had the job
  imported them itself; a warm sandbox that already holds more than the limit is not used.
- **the job**: its program, token and environment reach the zygote over a socket at the
  claim, never through a process environment (``/proc/<pid>/environ`` of the job's
  processes is the zygote's, which holds no secret); the zygote forks one process per
  worker, all in the warm sandbox's PID namespace.

The job's processes share the zygote's uid and PID namespace. The zygote is not dumpable:
they cannot trace it, read or write its memory, or open its socket through ``/proc``. They
can signal it: killing or stopping it ends their own attempt (a stopped zygote, found so at
a poll, is killed with the whole sandbox) and leaves the next attempt to another sandbox.
:class:`~.zygote_link.ZygoteLink` parses every message as untrusted, and a zygote that does
not answer is not used again. Without a writable cgroup hierarchy every attempt starts
cold: a warm sandbox's processes could not all be found to be signalled and killed.

**One attempt after another.** A trial of a study whose training is pruned after an epoch
runs for a few seconds: starting a sandbox for each (its imports: ~4 s of CPU) would cost
more than the trial. So a sandbox whose attempt ended may serve the next attempt of the
same *affinity* (:func:`nimbus.jobs.scheduler.affinity`): the same tenant and submitter's
token, the same code (a built-in model, or a script by its content hash), dataset version,
requirements and resources: a study's trials, or one user's sweep of their own script.
Attempts whose launch has no affinity are never served so. What one attempt leaves for
the next:

- **processes**: none. The attempt's workers are forked while the zygote sits in a cgroup
  of the attempt's own below the sandbox's (``job``): every process of the attempt is born
  there and cannot leave it; it is killed whole when the attempt ends, the zygote not.
- **files**: none in the work directory or ``/tmp``. Their entries move into a directory
  made afresh at the attempt's path (the server's, as every ended attempt's), and the bound
  directory, emptied, goes back to its place until the next claim (its ``/tmp`` stays in
  it, emptied: the sandbox's /tmp is bound to it). ``/dev/shm`` and the IPC namespace's
  System V objects are emptied by the zygote (``reset``). Not cleared: what bwrap and the
  zygote's imports made in /tmp before any attempt ran (mount points of what is bound below
  /tmp, torch's compile cache directory), with what attempts put inside; POSIX message
  queues (no file system lists them in the sandbox); and what the zygote's own memory
  holds, which the attempt's processes cannot reach (above).
- **limits**: the next claim writes its own; out-of-memory kills are counted from the
  claim on. An attempt that hit a limit (memory, disk) does not hand its sandbox on.
- **uid**: the same (one submitter's attempts). An unclaimed one waits at most
  ``USED_SECONDS``; at most twice the pool's size wait so (past it, the oldest goes).
- **the next attempt**: one of its affinity queued while the attempt in it is being stopped
  (a study cancels a pruned trial and queues the next at once), finding no warm sandbox
  ready, waits for it rather than for one starting, and starts in it once that attempt
  ended (within the kill grace); if it cannot serve again, the waiting attempt starts as
  any other at its next poll.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from nimbus.errors import Unavailable
from nimbus.jobs import cgroups
from nimbus.jobs.domain import ExitReason, Resources
from nimbus.jobs.executors.base import (
    JOB_USER,
    AttemptLaunch,
    ExitStatus,
    Handle,
    OutputPump,
    scrubbed_env,
)
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.executors.process import GroupHandle, Worker
from nimbus.jobs.executors.zygote_link import ZYGOTE_SCRIPT, ZygoteLink
from nimbus.jobs.gpus import GpusUnavailable
from nimbus.jobs.isolation import JOB_UMASK, TRAVERSE_MODE, WORKDIR_MODE, prepare_workdir
from nimbus.jobs.sandbox import (
    TMP_NAME,
    AttemptSandbox,
    AttemptView,
    Sandbox,
    gpu_devices,
    make_tmp,
    seccomp_memfd,
)
from nimbus.system import free_port

log = logging.getLogger(__name__)

WARM_DIR = ".warm"  # below the jobs root: the warm sandboxes' work directories
RETRY_SECONDS = 30.0  # after a warm sandbox failed to start, before the next try
# An unclaimed warm sandbox's cgroup: one CPU's quota (and weight, when not in the
# background), no memory limit until an attempt's is known.
UNCLAIMED = Resources(memory_bytes=0)
USED_SECONDS = 20.0  # a sandbox whose attempt ended waits this long for the next of its affinity
JOB_CGROUP = "job"  # the attempt's own cgroup, below the warm sandbox's
RESET_SECONDS = 2.0  # for an idle zygote's answer (a scheduler's tick waits for it)


@dataclass(frozen=True)
class WarmKey:
    """What a warm sandbox is started for: a tenant (its gid and download cache), with or
    without the GPUs' device nodes."""

    tenant_id: int | None
    cache_dir: str | None
    gpus: bool = False

    @classmethod
    def of(cls, launch: AttemptLaunch) -> WarmKey:
        return cls(
            launch.tenant_id,
            launch.extra_env.get("NIMBUS_CACHE_DIR") or None,
            launch.resources.gpus > 0,
        )


def warm_targets(recent: Sequence[WarmKey], size: int) -> Counter[WarmKey]:
    """How many warm sandboxes to keep for each key: the ``size`` keys used last
    (``recent``, most recent first, repeats allowed) one each, then dealt round again from
    the most recent until ``size`` are wanted in all."""
    keys = list(dict.fromkeys(recent))[:size]
    targets: Counter[WarmKey] = Counter()
    for i in range(size if keys else 0):
        targets[keys[i % len(keys)]] += 1
    return targets


def surplus_and_next(
    targets: Counter[WarmKey], ready: Counter[WarmKey], starting: Counter[WarmKey] | None = None
) -> tuple[Counter[WarmKey], WarmKey | None]:
    """What to discard (how many of each key's ready warm sandboxes are past its target)
    and which key to start one for next (None: every target met, counting the ones
    ``starting``)."""
    starting = starting if starting is not None else Counter()
    surplus = Counter({key: n - targets[key] for key, n in ready.items() if n > targets[key]})
    wanted = next((key for key, n in targets.items() if ready[key] + starting[key] < n), None)
    return surplus, wanted


def in_background(key: WarmKey, ready: Counter[WarmKey]) -> bool:
    """Whether a warm sandbox started now for ``key`` takes only the CPU time running
    attempts leave idle: yes while another one of its key is ready (the pool tops up), no
    when none is (the key's next attempt would otherwise start cold, its imports on its
    own critical path at its full weight: they run now instead, at one CPU's weight)."""
    return ready[key] > 0


@dataclass
class WarmSandbox:
    """One warm sandbox: its uid, gid, directory, cgroup, launcher process and zygote."""

    name: str
    key: WarmKey
    view: AttemptView
    cgroup: cgroups.AttemptCgroup
    proc: subprocess.Popen[bytes]
    link: ZygoteLink
    bound_at: Path  # its work directory inside, wherever it is outside
    keep: set[int] = field(default_factory=set)  # launcher, bwrap's init, the zygote
    cache_inode: int | None = None  # of the tenant's cache it has in view
    adopted: bool = False  # its directory became an attempt's work directory
    claimed: bool = False  # an attempt's sandbox holds its uid and cgroup now
    zygote: int | None = None  # the zygote's pid (here, not in its PID namespace)
    affinity: str | None = None  # of the attempts it served (see the module's docstring)
    kept: bool = False  # its attempt ended and it waits for the next of its affinity
    ending: bool = False  # its attempt was told to stop (cancelled, pruned): soon free
    idle_since: float = 0.0  # monotonic: since when it waits so
    # What its /tmp held before any job ran (mount points of what bwrap binds below /tmp,
    # torch's compile cache made by the imports): stays there between its attempts.
    scaffold: frozenset[str] = frozenset()
    # Its launcher's and zygote's stderr (a memfd of the server's; jobs write to their own
    # output): the traceback of a zygote that died, for the log. Closed when it is reaped.
    stderr: int | None = None

    @property
    def job(self) -> cgroups.AttemptCgroup:
        """The cgroup of its attempt's processes (below its own)."""
        return self.cgroup.child(JOB_CGROUP)

    @classmethod
    def start(
        cls,
        sandbox: Sandbox,
        key: WarmKey,
        root: Path,
        name: str,
        *,
        python: str,
        preload: Sequence[str],
        base_env: Mapping[str, str],
        timeout: float,
        urgent: threading.Event | None = None,
    ) -> WarmSandbox:
        """Start one for ``key`` and wait until its zygote imported ``preload``: at the
        lowest CPU weight unless ``urgent`` is set (before it starts, or while: whoever
        sets it then writes one CPU's weight to its cgroup, :meth:`cgroups.AttemptCgroup.reweigh`,
        which this start does itself if it finds it set once the cgroup is made)."""
        uid = sandbox.uids.acquire()
        gid = sandbox.settings.tenant_gid(key.tenant_id)
        workdir = root / name
        group = cgroups.AttemptCgroup(sandbox.hierarchies, name)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stderr = os.memfd_create(f"{name}-stderr", os.MFD_CLOEXEC)
        proc = None
        try:
            workdir.mkdir(mode=WORKDIR_MODE)
            os.chown(workdir, uid, gid, follow_symlinks=False)
            make_tmp(workdir, uid, gid)
            # Until claimed, at the lowest CPU weight unless urgent: its imports take only
            # the time that running attempts leave idle (the claim writes the attempt's).
            background = urgent is None or not urgent.is_set()
            pids = sandbox.settings.pids_per_worker
            group.create(UNCLAIMED, pids_per_worker=pids, background=background)
            if background and urgent is not None and urgent.is_set():  # raised meanwhile
                group.reweigh(UNCLAIMED.cpus)
            devices = gpu_devices() if key.gpus else ()
            cache = Path(key.cache_dir) if key.cache_dir else None
            view = AttemptView(uid, gid, workdir, cache, devices)
            zygote = [python, "-P", str(ZYGOTE_SCRIPT), str(theirs.fileno()), json.dumps(preload)]
            seccomp_fd = seccomp_memfd()  # the same filter as a cold attempt's
            try:
                command = sandbox.command(
                    AttemptSandbox(view, group), zygote, seccomp_fd=seccomp_fd
                )
                proc = subprocess.Popen(
                    command,
                    pass_fds=[theirs.fileno(), seccomp_fd],
                    env={**base_env, **JOB_USER, "HOME": str(workdir), "PYTHONUNBUFFERED": "1"},
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                    umask=JOB_UMASK,
                )
            finally:
                os.close(seccomp_fd)
            theirs.close()
            link = ZygoteLink(ours, f"warm sandbox {name}")
            try:
                ready = link.wait_ready(timeout)
            except Unavailable as exc:
                raise Unavailable(_with_said(str(exc), _tail(stderr))) from None
            failed = ready.get("failed")
            if failed:  # not fatal: a job imports what it needs itself
                log.warning("warm sandbox %s could not preload %s", name, failed)
            log.info("warm sandbox %s ready for tenant %s", name, key.tenant_id)
        except BaseException:
            theirs.close()
            ours.close()
            group.remove()
            if proc is not None:
                proc.wait()
            os.close(stderr)
            shutil.rmtree(workdir, ignore_errors=True)
            sandbox.uids.release(uid)
            raise
        inode = _inode(cache)
        keep = group.pids()
        found = host_pid(ready.get("pid"), keep)
        made = frozenset(os.listdir(workdir / TMP_NAME))
        return cls(
            name,
            key,
            view,
            group,
            proc,
            link,
            workdir,
            keep,
            inode,
            zygote=found,
            scaffold=made,
            stderr=stderr,
        )

    def alive(self) -> bool:
        return self.link.alive and self.proc.poll() is None

    def said(self) -> str:
        """The end of what its launcher and zygote wrote to stderr ('' for nothing): why
        it died, where it did with a message."""
        return _tail(self.stderr) if self.stderr is not None else ""

    def cache_replaced(self) -> bool:
        """Whether the tenant's cache directory was made afresh since this one started
        (its view would show the old one)."""
        return _inode(self.view.cache_dir) != self.cache_inode

    def adopt(self, workdir: Path) -> None:
        """Become the attempt's work directory ``workdir`` (made by the scheduler, holding
        only what the server put there): its files move in, then this directory is
        renamed onto it. On failure, everything is put back."""
        moved: list[Path] = []
        try:
            for entry in workdir.iterdir():
                target = self.view.workdir / entry.name
                os.rename(entry, target)
                moved.append(target)
                os.chown(target, self.view.uid, self.view.gid, follow_symlinks=False)
            os.rename(self.view.workdir, workdir)  # onto an empty directory: replaces it
        except OSError:
            for target in moved:
                with contextlib.suppress(OSError):
                    os.rename(target, workdir / target.name)
            raise
        self.view = replace(self.view, workdir=workdir)
        self.adopted = True

    @contextlib.contextmanager
    def forking(self) -> Iterator[None]:
        """While its attempt's workers are forked: the zygote in the attempt's cgroup
        (:attr:`job`), so that they and all their descendants are born there; then back."""
        if self.zygote is None:
            yield
            return
        try:
            self.job.make()
            self.job.join(self.zygote)
        except OSError as exc:  # gone (the cgroup's are written as the server's own)
            raise Unavailable(f"the zygote of warm sandbox {self.name} is gone: {exc}") from exc
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # gone: the sandbox is not used again
                self.cgroup.join(self.zygote)

    def release(self, workdir: Path) -> None:
        """After its attempt ended: kill whatever the attempt left running, give the
        attempt's work directory ``workdir`` its files in a directory of the server's
        (as an ended attempt's is) and take the bound one back, emptied, to its place.
        OSError if any of it fails (the sandbox is then not used again)."""
        self.job.remove()
        if self.job.pids():
            raise OSError(f"processes of the attempt outlived its end: {self.job.pids()}")
        os.rename(workdir, self.bound_at)
        self.view = replace(self.view, workdir=self.bound_at)
        self.adopted = False
        workdir.mkdir(mode=0o700)
        # Its /tmp is bound to the sandbox's: emptied into the attempt's, never moved.
        tmp, kept_tmp = self.bound_at / TMP_NAME, workdir / TMP_NAME
        kept_tmp.mkdir(mode=0o700)
        for entry in list(self.bound_at.iterdir()):
            if entry.name != TMP_NAME:
                os.rename(entry, workdir / entry.name)
        for entry in list(tmp.iterdir()):
            if entry.name not in self.scaffold:
                os.rename(entry, kept_tmp / entry.name)

    def inside(self, env: dict[str, str], workdir: Path) -> dict[str, str]:
        """``env`` with the attempt's work directory said as the job sees it."""
        outside = str(workdir)
        return {k: str(self.bound_at) if v == outside else v for k, v in env.items()}

    def signal_job(self, sig: int) -> None:
        """``sig`` to the job's processes: not to bwrap or the zygote, whose death would
        SIGKILL the job at once instead of letting it end within its grace period."""
        for pid in self.cgroup.pids() - self.keep:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def discard(self, sandbox: Sandbox) -> None:
        """Kill an unclaimed one and free what it held."""
        self.cgroup.remove()
        self.reap()
        if not self.adopted:
            shutil.rmtree(self.view.workdir, ignore_errors=True)
        sandbox.uids.release(self.view.uid)

    def reap(self) -> None:
        """Wait for the launcher once its sandbox was killed."""
        self.link.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.stderr is not None:
            os.close(self.stderr)
            self.stderr = None

    def drop(self, sandbox: Sandbox, how: str) -> None:
        """:meth:`discard` one that cannot serve, saying why in the log."""
        said = self.said()
        status = self.proc.poll()
        log.warning(
            "warm sandbox %s %s (its launcher %s)",
            self.name,
            _with_said(how, said),
            "runs" if status is None else f"exited with {status}",
        )
        self.discard(sandbox)


SAID_BYTES = 2048  # of a warm sandbox's stderr, in the log


def _tail(fd: int) -> str:
    """The last :data:`SAID_BYTES` written to ``fd`` (a memfd), stripped."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, SAID_BYTES, max(0, size - SAID_BYTES))
    except OSError:
        return ""
    return data.decode(errors="replace").strip()


def _with_said(what: str, said: str) -> str:
    return f"{what}; its stderr ended: {said!r}" if said else what


def host_pid(ns_pid: object, candidates: Iterable[int]) -> int | None:
    """Which of ``candidates`` (pids here) is pid ``ns_pid`` in its own, innermost PID
    namespace (read from ``/proc/<pid>/status``); None if none is."""
    if not isinstance(ns_pid, int) or isinstance(ns_pid, bool):
        return None
    for pid in sorted(candidates):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                if len(ids) >= 2 and ids[-1] == str(ns_pid):
                    return pid
    return None


def process_state(pid: int) -> str:
    """Process ``pid``'s state letter (``R``, ``S``, ``T``: stopped, ...); "" if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last.
    fields = stat[stat.rfind(")") + 1 :].split()
    return fields[0] if fields else ""


def _inode(path: Path | None) -> int | None:
    try:
        return path.stat().st_ino if path is not None else None
    except OSError:
        return None


def _infra(detail: str) -> ExitStatus:
    return ExitStatus(None, limit=ExitReason.INFRA, detail=detail)


class _Cold(Exception):
    """This warm sandbox cannot take the attempt, and nothing of the job ran in it."""


@dataclass
class _Waiting:
    """An attempt waiting for the warm sandbox starting for it (none of its key was ready):
    its handle has no worker yet. ``cold``: that start failed, the next poll starts it cold;
    ``ended``: it ends without having started (killed, or its claim failed), said by the next
    poll; ``handing``: its workers are being spawned (off the scheduler's thread: polls wait,
    a kill is noted in ``killed`` and sent once they are)."""

    launch: AttemptLaunch
    handle: GroupHandle
    name: str  # the warm sandbox it waits for
    cold: bool = False
    ended: ExitStatus | None = None
    handing: bool = False
    killed: bool = False


class WarmSandboxExecutor(LocalExecutor):
    """Runs each attempt in a warm sandbox of its tenant when one is ready, else in the one
    starting for its tenant once it is (never slower than a cold start: that one's imports
    are under way), else cold (as :class:`LocalExecutor` with the sandbox). Keeps up to
    ``size`` warm sandboxes for the tenants seen last, replacing each one claimed (or
    promised to a waiting attempt) at once, several starting at a time."""

    def __init__(
        self,
        jobs_root: Path,
        *,
        sandbox: Sandbox,
        size: int = 2,
        reuse: bool = True,
        preload: Sequence[str] = ("torch",),
        python: str = sys.executable,
        base_env: Mapping[str, str] | None = None,
        grace_seconds: float = 10.0,
        start_timeout: float = 120.0,
        warm_dir: str = WARM_DIR,
    ) -> None:
        super().__init__(
            jobs_root,
            python=python,
            base_env=base_env,
            grace_seconds=grace_seconds,
            sandbox=sandbox,
        )
        self.warm_sandbox = sandbox
        self.size = size if sandbox.hierarchies else 0  # see the module's docstring
        self.preload = list(preload)
        self.start_timeout = start_timeout
        # Its own below the jobs root (several executors may share a root: Ray nodes on one
        # machine), and a dot-directory: never purged as a job's.
        self.warm_root = self.jobs_root / warm_dir
        shutil.rmtree(self.warm_root, ignore_errors=True)  # a previous run's, its processes gone
        self.warm_root.mkdir(mode=TRAVERSE_MODE)
        os.chmod(self.warm_root, TRAVERSE_MODE)
        self.warm_starts = self.cold_starts = 0
        self.waited_starts = 0  # of the warm starts: attempts that waited for theirs
        self.reused_starts = 0  # of the warm starts: in a sandbox an earlier attempt ran in
        # At most so many wait for the next attempt of their affinity (0: none do).
        self.keep_used = 2 * self.size if reuse else 0
        self._used: list[WarmSandbox] = []  # ended attempts' sandboxes, the oldest first
        self.warm_up_seconds: list[float] = []  # how long each warm sandbox took to start
        self._cond = threading.Condition()
        self._recent: list[WarmKey] = []
        self._ready: list[WarmSandbox] = []
        self._starting: dict[str, tuple[WarmKey, threading.Event]] = {}  # name -> key, urgent
        self._prefix = f"warm-{secrets.token_hex(4)}-"  # its warm sandboxes' names
        self._count = 0
        self._retry_at = 0.0  # monotonic: no warm sandbox is started before then
        self._closed = False
        # Attempts' state, shared by the scheduler's thread (start, poll, kill) and the
        # threads that hand a warm sandbox to an attempt waiting for it.
        self._attempts = threading.RLock()
        self._claimed: dict[str, WarmSandbox] = {}  # attempt id -> its warm sandbox
        self._workers: dict[int, tuple[WarmSandbox, int]] = {}  # id(worker) -> zygote pid
        self._waiting: dict[str, _Waiting] = {}  # attempt id -> it, until it has its workers
        self._promised: dict[str, _Waiting] = {}  # starting warm sandbox's name -> who waits
        # A claimed warm sandbox's name -> the attempt of its affinity waiting for it, once
        # the attempt in it (told to stop) has ended.
        self._next_of: dict[str, _Waiting] = {}
        # Warm sandboxes are started by these threads, which live as long as the executor:
        # bwrap's --die-with-parent follows the thread that started it. Several at once: a
        # burst of attempts is not served one import after another; twice the pool's size:
        # those promised to waiting attempts are replaced while they finish starting.
        self._threads = [
            threading.Thread(target=self._keep_warm, name=f"warm-sandboxes-{i}", daemon=True)
            for i in range(2 * max(1, self.size))
        ]
        for thread in self._threads:
            thread.start()

    # -- the pool ---------------------------------------------------------------------------

    def expect(self, tenant_id: int | None, cache_dir: Path | None = None) -> None:
        """Keep a warm sandbox ready for ``tenant_id``'s next attempt (without GPUs)."""
        self._note(WarmKey(tenant_id, str(cache_dir) if cache_dir else None))

    def wait_warm(
        self, tenant_id: int | None, cache_dir: Path | None = None, *, timeout: float
    ) -> bool:
        """Wait until a warm sandbox for ``tenant_id`` is ready; whether one is."""
        key = WarmKey(tenant_id, str(cache_dir) if cache_dir else None)
        with self._cond:
            return (
                self._cond.wait_for(
                    lambda: any(w.key == key for w in self._ready) or self._closed, timeout
                )
                and not self._closed
            )

    def _note(self, key: WarmKey) -> None:
        with self._cond:
            self._recent = [key, *(k for k in self._recent if k != key)][: max(self.size, 1)]
            self._cond.notify_all()

    def _take(self, key: WarmKey) -> WarmSandbox | None:
        """A ready warm sandbox for ``key``, now the caller's; notes ``key`` as used."""
        dead = []
        taken = None
        with self._cond:
            for warm in list(self._ready):
                if not warm.alive():
                    self._ready.remove(warm)
                    dead.append(warm)
                elif taken is None and warm.key == key:
                    self._ready.remove(warm)
                    taken = warm
        for warm in dead:
            warm.drop(self.warm_sandbox, "was found gone while it waited")
        if self.size:
            self._note(key)
        return taken

    def _take_used(self, key: WarmKey, affinity: str | None) -> WarmSandbox | None:
        """The sandbox an earlier attempt of ``affinity`` ran in, if one waits; now the
        caller's."""
        if affinity is None:
            return None
        with self._cond:
            for warm in reversed(self._used):  # the most recent: its pages are the warmest
                if warm.key == key and warm.affinity == affinity:
                    self._used.remove(warm)
                    break
            else:
                return None
        if warm.alive():
            return warm
        warm.drop(self.warm_sandbox, "was found gone while it waited for its affinity")
        return None

    def _expired(self) -> tuple[list[WarmSandbox], float | None]:
        """(Under the lock) the used sandboxes that waited ``USED_SECONDS``, or the oldest
        past :attr:`keep_used`, taken out; and how long until the next one has waited."""
        now = time.monotonic()
        expired = [w for w in self._used if now - w.idle_since >= USED_SECONDS]
        for warm in expired:
            self._used.remove(warm)
        while len(self._used) > self.keep_used:
            expired.append(self._used.pop(0))
        left = [w.idle_since + USED_SECONDS - now for w in self._used]
        return expired, min(left) if left else None

    def _keep_warm(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    expired, next_expiry = self._expired()
                    if expired:
                        break
                    ready = Counter(w.key for w in self._ready)
                    # One starting that an attempt waits for is that attempt's already.
                    starting = Counter(
                        key for n, (key, _) in self._starting.items() if n not in self._promised
                    )
                    targets = warm_targets(self._recent, self.size)
                    surplus, wanted = surplus_and_next(targets, ready, starting)
                    pause = self._retry_at - time.monotonic()
                    if wanted is not None and pause > 0:  # the last start failed
                        wanted = None
                    if surplus or wanted is not None:
                        break
                    waits = [t for t in (pause, next_expiry) if t is not None and t > 0]
                    self._cond.wait(min(waits) if waits else None)
                if expired:
                    surplus, wanted = Counter(), None
                discard = []
                for warm in list(self._ready):  # the oldest first
                    if surplus[warm.key] > 0:
                        surplus[warm.key] -= 1
                        self._ready.remove(warm)
                        discard.append(warm)
                self._count += 1
                name = f"{self._prefix}{self._count}"
                urgent = threading.Event()
                if wanted is not None:
                    if not in_background(wanted, ready):
                        urgent.set()
                    self._starting[name] = (wanted, urgent)
            for warm in [*discard, *expired]:
                warm.discard(self.warm_sandbox)
            if wanted is not None:
                self._start_one(wanted, name, urgent)

    def _start_one(self, key: WarmKey, name: str, urgent: threading.Event) -> None:
        began = time.monotonic()
        try:
            warm = WarmSandbox.start(
                self.warm_sandbox,
                key,
                self.warm_root,
                name,
                python=self.python,
                preload=self.preload,
                base_env=self.base_env,
                timeout=self.start_timeout,
                urgent=urgent,
            )
        except Exception:
            log.exception("could not start a warm sandbox; attempts start cold meanwhile")
            with self._cond:
                self._retry_at = time.monotonic() + RETRY_SECONDS
                self._starting.pop(name, None)
                waiting = self._promised.pop(name, None)
            if waiting is not None:
                with self._attempts:
                    waiting.cold = True  # its next poll starts it cold
            return
        with self._cond:
            self.warm_up_seconds.append(time.monotonic() - began)
            self._starting.pop(name, None)
            waiting = self._promised.pop(name, None)
            closed = self._closed
            if not closed and waiting is None:
                self._ready.append(warm)
                self._cond.notify_all()
                return
        if closed:  # nothing starts in it any more
            warm.discard(self.warm_sandbox)
            if waiting is not None:
                with self._attempts:
                    waiting.ended = waiting.ended or _infra("its executor was closed")
            return
        assert waiting is not None
        self._hand_over(waiting, warm)

    def _hand_over(self, waiting: _Waiting, warm: WarmSandbox) -> None:
        """Start ``waiting``'s attempt in ``warm``, just started for it (on the thread that
        started it, without holding up the scheduler's polls); if it was killed meanwhile,
        ``warm`` joins the pool."""
        attempt_id = waiting.launch.attempt_id
        with self._attempts:
            waiting.handing = self._waiting.get(attempt_id) is waiting and not waiting.ended
        if not waiting.handing:
            with self._cond:
                if not self._closed and warm.alive():  # nobody waits for it: another may
                    self._ready.append(warm)
                    self._cond.notify_all()
                    return
            warm.discard(self.warm_sandbox)
            return
        try:
            started = self._try_warm(waiting.launch, warm, waiting.handle)
        except Exception as exc:  # what it held is freed already
            log.exception("could not start attempt %s", attempt_id)
            with self._attempts:
                waiting.handing, waiting.ended = False, _infra(f"could not start: {exc}")
            return
        if started is None:
            with self._attempts:
                waiting.handing, waiting.cold = False, True
                if waiting.killed:
                    waiting.ended = ExitStatus(None, signal.SIGKILL)
            return
        with self._attempts:
            waiting.handing = False
            del self._waiting[attempt_id]
            self.waited_starts += 1
            if waiting.killed:
                self.kill(waiting.handle)

    def _wait_for_starting(self, launch: AttemptLaunch, key: WarmKey) -> GroupHandle | None:
        """A handle for ``launch``, which waits for a warm sandbox of ``key`` that is
        starting and promised to no one else (raised to the attempt's CPU weight now: its
        imports are the attempt's); None when there is none."""
        with self._cond:
            name = next(
                (n for n, (k, _) in self._starting.items() if k == key and n not in self._promised),
                None,
            )
            if name is None:
                return None
            handle = GroupHandle(launch.attempt_id, launch.workdir)
            waiting = _Waiting(launch, handle, name)
            self._promised[name] = waiting
            self._waiting[launch.attempt_id] = waiting
            urgent = self._starting[name][1]
            self._cond.notify_all()  # it is the attempt's now: the pool starts another
        urgent.set()
        cgroups.AttemptCgroup(self.warm_sandbox.hierarchies, name).reweigh(UNCLAIMED.cpus)
        return handle

    # -- attempts -------------------------------------------------------------------------

    def start(self, launch: AttemptLaunch) -> Handle:
        key = WarmKey.of(launch)
        with self._attempts:
            if (again := self._start_used(launch, key)) is not None:
                return again
        warm = self._take(key)
        with self._attempts:
            if warm is not None:
                if (started := self._try_warm(launch, warm)) is not None:
                    return started
            # None ready: the one an attempt of its affinity is ending in is free sooner (the
            # kill grace at most) than one starting (its imports).
            elif (waiting := self._wait_for_ending(launch, key)) is not None:
                return waiting
            elif self.size and (handle := self._wait_for_starting(launch, key)) is not None:
                return handle
            return self._start_cold(launch)

    def _start_used(
        self, launch: AttemptLaunch, key: WarmKey, handle: GroupHandle | None = None
    ) -> GroupHandle | None:
        """Start ``launch`` in the sandbox an earlier attempt of its affinity left, if one
        waits and can take it; else None."""
        used = self._take_used(key, launch.affinity)
        if used is None or (started := self._try_warm(launch, used, handle)) is None:
            return None
        self.reused_starts += 1
        if self.size:
            self._note(key)
        return started

    def _try_warm(
        self, launch: AttemptLaunch, warm: WarmSandbox, handle: GroupHandle | None = None
    ) -> GroupHandle | None:
        """:meth:`_start_warm`, or None when ``warm`` cannot take the attempt (nothing of
        it ran there: ``warm`` is discarded)."""
        try:
            return self._start_warm(launch, warm, handle)
        except _Cold as exc:
            warm.drop(self.warm_sandbox, f"not used: {exc}")
            return None

    def _wait_for_ending(self, launch: AttemptLaunch, key: WarmKey) -> GroupHandle | None:
        """A handle for ``launch``, which waits for the sandbox an attempt of its affinity
        runs in and was told to stop (a study's pruned trial, whose next trial is queued as
        it is cancelled): once that attempt ended (within the kill grace), the waiting one
        starts at its next poll, there if it can serve again, else as any other start.
        None when there is no such sandbox."""
        if launch.affinity is None or not self.keep_used:
            return None
        with self._attempts:
            ending = next(
                (
                    warm
                    for warm in self._claimed.values()
                    if warm.ending
                    and warm.key == key
                    and warm.affinity == launch.affinity
                    and warm.name not in self._next_of
                ),
                None,
            )
            if ending is None:
                return None
            handle = GroupHandle(launch.attempt_id, launch.workdir)
            waiting = _Waiting(launch, handle, ending.name)
            self._next_of[ending.name] = waiting
            self._waiting[launch.attempt_id] = waiting
            return handle

    def _start_cold(self, launch: AttemptLaunch) -> GroupHandle:
        self.cold_starts += 1
        handle = super().start(launch)
        assert isinstance(handle, GroupHandle)
        return handle

    def _settle_waiting(self, waiting: _Waiting) -> ExitStatus | None:
        """For a poll of an attempt still waiting: its end if it could not start; once the
        sandbox it waited for failed or ended unusable (``cold``), it starts as any other
        would (a sandbox of its affinity left, one ready, else cold); None while it waits."""
        attempt_id = waiting.launch.attempt_id
        if waiting.handing:
            return None
        if waiting.ended is not None:
            del self._waiting[attempt_id]
            return waiting.ended
        if not waiting.cold:
            return None
        del self._waiting[attempt_id]
        launch, handle = waiting.launch, waiting.handle
        key = WarmKey.of(launch)
        try:
            if self._start_used(launch, key, handle) is not None:
                return None
            warm = self._take(key)
            if warm is not None and self._try_warm(launch, warm, handle) is not None:
                return None
            cold = self._start_cold(launch)
        except Exception as exc:  # what it held is freed already
            log.exception("could not start attempt %s", attempt_id)
            return _infra(f"could not start: {exc}")
        handle.workers, handle.sandbox = cold.workers, cold.sandbox
        self._handles[attempt_id] = handle
        return None

    def _start_warm(
        self, launch: AttemptLaunch, warm: WarmSandbox, handle: GroupHandle | None = None
    ) -> GroupHandle:
        """Start ``launch`` in ``warm``: its GPUs taken first (as a cold start takes them),
        given back if it does not start."""
        res = launch.resources
        with self._attempts:  # a hand-over's thread may start another at the same time
            try:
                pinned = self.gpus.take(launch.attempt_id, res.gpus, res.workers)
            except GpusUnavailable as exc:
                raise _Cold(str(exc)) from exc
        try:
            return self._claim(launch, warm, handle, pinned)
        except BaseException:
            with self._attempts:
                self.gpus.release(launch.attempt_id)
            raise

    def _claim(
        self,
        launch: AttemptLaunch,
        warm: WarmSandbox,
        handle: GroupHandle | None,
        pinned: list[str] | None,
    ) -> GroupHandle:
        prepare_workdir(self.jobs_root, launch.workdir, None)
        limit = launch.resources.total_memory_bytes
        if limit and warm.cgroup.memory_usage() >= limit:
            raise _Cold(f"it holds more memory than the attempt's limit ({limit} bytes)")
        if warm.cache_replaced():
            raise _Cold("its tenant's cache directory was made afresh since it started")
        try:
            warm.adopt(launch.workdir)
            warm.cgroup.create(
                launch.resources, pids_per_worker=self.warm_sandbox.settings.pids_per_worker
            )
        except OSError as exc:
            if warm.adopted:  # the work directory is its: hand it back to the server
                with contextlib.suppress(OSError):
                    os.chown(launch.workdir, os.geteuid(), os.getegid(), follow_symlinks=False)
            raise _Cold(str(exc)) from exc
        if handle is None:
            handle = GroupHandle(launch.attempt_id, launch.workdir)
        handle.sandbox = AttemptSandbox(warm.view, warm.cgroup)
        warm.claimed, warm.affinity, warm.kept, warm.ending = True, launch.affinity, False, False
        warm.cgroup.oom_base = warm.cgroup.oom_count()  # an earlier attempt's are not its
        self._claimed[launch.attempt_id] = warm
        world = launch.resources.workers
        port = free_port() if world > 1 else None
        try:
            with warm.forking():
                self._spawn_workers(launch, warm, handle, port, pinned)
        except BaseException as exc:
            self._claimed.pop(launch.attempt_id, None)
            for worker in handle.workers:
                self._workers.pop(id(worker), None)
            if not handle.workers and isinstance(exc, Unavailable):  # died while idle
                warm.claimed = False  # start() discards it: its uid is freed once, there
                raise _Cold(str(exc)) from exc
            assert handle.sandbox is not None
            self.warm_sandbox.leave(handle.sandbox)  # kills it all, frees the uid
            warm.reap()
            raise
        self._handles[launch.attempt_id] = handle
        self.warm_starts += 1
        return handle

    def _spawn_workers(
        self,
        launch: AttemptLaunch,
        warm: WarmSandbox,
        handle: GroupHandle,
        port: int | None,
        pinned: list[str] | None,
    ) -> None:
        """Have ``warm``'s zygote fork the attempt's workers, each with its output pumped
        and its GPUs (``pinned``, per rank) alone visible."""
        world = launch.resources.workers
        for rank in range(world):
            env = scrubbed_env(
                launch, base=self.base_env, rank=rank, world_size=world, master_port=port
            )
            if pinned is not None:  # numbered as nvidia-smi numbers them
                env.update(CUDA_VISIBLE_DEVICES=pinned[rank], CUDA_DEVICE_ORDER="PCI_BUS_ID")
            read_fd, write_fd = os.pipe()
            try:
                pid = warm.link.spawn(
                    launch.program, str(warm.bound_at), warm.inside(env, launch.workdir), write_fd
                )
            except BaseException:
                os.close(read_fd)
                raise
            finally:
                os.close(write_fd)
            pump = OutputPump(read_fd, launch.output, prefix=f"[{rank}] " if world > 1 else "")
            pump.start()
            worker = Worker(rank, pid, pump)
            self._workers[id(worker)] = (warm, pid)
            handle.workers.append(worker)

    def poll(self, handle: Handle) -> ExitStatus | None:
        with self._attempts:
            waiting = self._waiting.get(handle.attempt_id)
            if waiting is not None:
                status = self._settle_waiting(waiting)
                if status is not None or handle.attempt_id in self._waiting:
                    return status
            status = super().poll(handle)
            if status is not None:
                warm = self._claimed.pop(handle.attempt_id, None)
                if warm is not None:
                    self._ended_in(warm)
            return status

    def _ended_in(self, warm: WarmSandbox) -> None:
        """``warm``'s attempt ended: keep it for the next of its affinity
        (:attr:`WarmSandbox.kept`), the one waiting for it first, else let it go."""
        waiting = self._next_of.pop(warm.name, None)
        if waiting is not None and waiting.ended is None:
            # Its next poll starts it as any start would: here, kept below, if it can be.
            waiting.cold = True
        if warm.kept:
            with self._cond:
                warm.idle_since = time.monotonic()
                self._used.append(warm)
                self._cond.notify_all()  # its keeper counts its wait
        else:
            warm.reap()  # its cgroup was killed with the attempt

    def _leave(self, group: GroupHandle, status: ExitStatus) -> None:
        warm = self._claimed.get(group.attempt_id)
        if warm is not None and self._may_keep(warm, status):
            try:
                warm.release(group.workdir)
                self._reset(warm)
            except (OSError, Unavailable) as exc:
                log.warning("warm sandbox %s not used again: %s", warm.name, exc)
                super()._leave(group, status)
                if not warm.adopted:  # released: its own directory is back, emptied
                    shutil.rmtree(warm.bound_at, ignore_errors=True)
                return
            warm.kept = True
            return
        super()._leave(group, status)

    def _may_keep(self, warm: WarmSandbox, status: ExitStatus) -> bool:
        """Whether ``warm``, whose attempt ended with ``status``, may wait for the next
        attempt of its affinity (see the module's docstring)."""
        with self._cond:
            room = not self._closed and self.keep_used > 0  # the oldest waiting goes first
        return (
            room
            and warm.affinity is not None
            and warm.zygote is not None
            and status.limit is None
            and warm.alive()
        )

    def _reset(self, warm: WarmSandbox) -> None:
        """Have ``warm``'s zygote clear what its attempt left (its processes are dead: none
        can stop or kill the zygote from now on); Unavailable if it cannot."""
        assert warm.zygote is not None
        if process_state(warm.zygote) in ("", "T", "t", "Z", "X"):  # stopped, or gone
            raise Unavailable(f"the zygote of warm sandbox {warm.name} is stopped or gone")
        warm.link.reset(timeout=RESET_SECONDS)

    def kill(self, handle: Handle) -> None:
        with self._attempts:
            waiting = self._waiting.get(handle.attempt_id)
            if waiting is None:
                if (warm := self._claimed.get(handle.attempt_id)) is not None:
                    warm.ending = True  # the next of its affinity may wait for it
                super().kill(handle)
            elif waiting.handing:
                waiting.killed = True
            elif waiting.ended is None:  # nothing of it runs: it ends now, as if killed
                waiting.ended = ExitStatus(None, signal.SIGKILL)
                if self._next_of.get(waiting.name) is waiting:
                    del self._next_of[waiting.name]
                with self._cond:
                    if self._promised.get(waiting.name) is waiting:
                        del self._promised[waiting.name]

    def _reap(self, worker: Worker) -> ExitStatus | None:
        found = self._workers.get(id(worker))
        if found is None:
            return super()._reap(worker)
        warm, pid = found
        status = warm.link.exit_of(pid)
        if status is not None:
            del self._workers[id(worker)]
        elif warm.zygote is not None and process_state(warm.zygote) in ("T", "t"):
            # Stopped (by the job: its uid), it would never say how its workers ended: the
            # sandbox ends whole, and they as killed (the next poll, its socket closed).
            warm.cgroup.kill(timeout=0)
        return status

    def _signal(self, group: GroupHandle, sig: int) -> None:
        # Its workers' pids are the zygote's PID namespace's: never signalled from here.
        warm = self._claimed.get(group.attempt_id)
        if warm is None:
            super()._signal(group, sig)
        elif sig == signal.SIGKILL:
            # The attempt's processes; the zygote too where they are not in a cgroup apart.
            (warm.job if warm.zygote is not None else warm.cgroup).kill(timeout=0)
        else:
            warm.signal_job(sig)

    def reap_orphans(self, should_kill: Callable[[str], bool]) -> list[str]:
        # Its own warm sandboxes' cgroups, claimed or not, are no orphans.
        return super().reap_orphans(
            lambda name: not name.startswith(self._prefix) and should_kill(name)
        )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + self.start_timeout + 10
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._cond:
            ready, self._ready = self._ready, []
            used, self._used = self._used, []
        for warm in [*ready, *used]:
            warm.discard(self.warm_sandbox)
        super().close()
