"""Warm sandboxes: the fork server's warm start, inside the sandbox.

A *warm sandbox* is an attempt's sandbox (:mod:`nimbus.jobs.sandbox`) started before its
attempt is known, with a zygote (:mod:`.zygote`) in it that already imported the heavy
modules (torch, the runtime). Exactly one attempt claims it, and it ends with that
attempt: it is never shared across attempts or tenants. What bubblewrap fixes when it
starts is chosen ahead and handed over at the claim:

- **uid**: taken from the sandbox's uid pool when the warm sandbox starts; the attempt's
  once claimed, freed when the attempt ends.
- **tenant** (the gid, the tenant's download cache in view, GPU device nodes): a warm
  sandbox is started *for* a tenant, one whose attempts ran recently
  (:func:`warm_targets`). An attempt with no warm sandbox of its tenant ready starts cold,
  and one is started in the background for the tenant's next attempt.
- **work directory**: an empty directory of its own, ``<jobs root>/.warm/<name>``, is
  bound in. At the claim the server moves what it put in the attempt's directory
  (``job.json``) into it and renames it onto the attempt's directory: the attempt's files
  are where every attempt's are. Inside, the job sees it where it was bound; its HOME,
  TMPDIR and NIMBUS_JOB_DIR say that path.
- **cgroup**: the warm sandbox's processes are in a cgroup of their own from the start
  (the launcher joins it before it execs bwrap). At the claim the attempt's limits
  (memory, processes, CPU) are written there before any of the job's code runs; at its
  end the cgroup is killed whole, as every attempt's. Until the claim it runs at the lowest
  CPU weight: its imports take the CPU time running attempts leave idle, not theirs. What
  the imports took counts against the attempt's memory limit, as it would had the job
  imported them itself; a warm sandbox that already holds more than the limit is not used.
- **the job**: its program, token and environment reach the zygote over a socket at the
  claim, never through a process environment (``/proc/<pid>/environ`` of the job's
  processes is the zygote's, which holds no secret); the zygote forks one process per
  worker, all in the warm sandbox's PID namespace.

Once claimed, the zygote belongs to the attempt: the job's processes share its uid and
PID namespace and could take it over. All that gains them is ending their own attempt
(:class:`~.zygote_link.ZygoteLink` parses every message as untrusted). Without a
writable cgroup hierarchy every attempt starts cold: a warm sandbox's processes could not
all be found to be signalled and killed.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from nimbus.errors import Unavailable
from nimbus.jobs import cgroups
from nimbus.jobs.domain import Resources
from nimbus.jobs.executors.base import (
    AttemptLaunch,
    ExitStatus,
    Handle,
    OutputPump,
    scrubbed_env,
)
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.executors.process import GroupHandle, Worker
from nimbus.jobs.executors.zygote_link import ZYGOTE_SCRIPT, ZygoteLink
from nimbus.jobs.isolation import JOB_UMASK, TRAVERSE_MODE, WORKDIR_MODE, prepare_workdir
from nimbus.jobs.sandbox import (
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
    targets: Counter[WarmKey], ready: Counter[WarmKey]
) -> tuple[Counter[WarmKey], WarmKey | None]:
    """What to discard (how many of each key's ready warm sandboxes are past its target)
    and which key to start one for next (None: every target met)."""
    surplus = Counter({key: n - targets[key] for key, n in ready.items() if n > targets[key]})
    wanted = next((key for key, n in targets.items() if ready[key] < n), None)
    return surplus, wanted


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
    ) -> WarmSandbox:
        """Start one for ``key`` and wait until its zygote imported ``preload``."""
        uid = sandbox.uids.acquire()
        gid = sandbox.settings.tenant_gid(key.tenant_id)
        workdir = root / name
        group = cgroups.AttemptCgroup(sandbox.hierarchies, name)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = None
        try:
            workdir.mkdir(mode=WORKDIR_MODE)
            os.chown(workdir, uid, gid, follow_symlinks=False)
            make_tmp(workdir, uid, gid)
            # Until claimed, at the lowest CPU weight: its imports take only the time that
            # running attempts leave idle (the claim writes the attempt's weight).
            group.create(
                Resources(memory_bytes=0),
                pids_per_worker=sandbox.settings.pids_per_worker,
                background=True,
            )
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
                    env={**base_env, "HOME": str(workdir), "PYTHONUNBUFFERED": "1"},
                    cwd="/",
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    umask=JOB_UMASK,
                )
            finally:
                os.close(seccomp_fd)
            theirs.close()
            link = ZygoteLink(ours, f"warm sandbox {name}")
            failed = link.wait_ready(timeout).get("failed")
            if failed:  # not fatal: a job imports what it needs itself
                log.warning("warm sandbox %s could not preload %s", name, failed)
            log.info("warm sandbox %s ready for tenant %s", name, key.tenant_id)
        except BaseException:
            theirs.close()
            ours.close()
            group.remove()
            if proc is not None:
                proc.wait()
            shutil.rmtree(workdir, ignore_errors=True)
            sandbox.uids.release(uid)
            raise
        inode = _inode(cache)
        return cls(name, key, view, group, proc, link, workdir, group.pids(), inode)

    def alive(self) -> bool:
        return self.link.alive and self.proc.poll() is None

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


def _inode(path: Path | None) -> int | None:
    try:
        return path.stat().st_ino if path is not None else None
    except OSError:
        return None


class _Cold(Exception):
    """This warm sandbox cannot take the attempt, and nothing of the job ran in it."""


class WarmSandboxExecutor(LocalExecutor):
    """Runs each attempt in a warm sandbox of its tenant when one is ready, else cold (as
    :class:`LocalExecutor` with the sandbox); keeps up to ``size`` warm sandboxes for the
    tenants seen last, replacing each one claimed in a background thread."""

    def __init__(
        self,
        jobs_root: Path,
        *,
        sandbox: Sandbox,
        size: int = 2,
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
        self.warm_up_seconds: list[float] = []  # how long each warm sandbox took to start
        self._cond = threading.Condition()
        self._recent: list[WarmKey] = []
        self._ready: list[WarmSandbox] = []
        self._prefix = f"warm-{secrets.token_hex(4)}-"  # its warm sandboxes' names
        self._count = 0
        self._retry_at = 0.0  # monotonic: no warm sandbox is started before then
        self._closed = False
        self._claimed: dict[str, WarmSandbox] = {}  # attempt id -> its warm sandbox
        self._workers: dict[int, tuple[WarmSandbox, int]] = {}  # id(worker) -> zygote pid
        # Warm sandboxes are started by this one thread, which lives as long as the
        # executor: bwrap's --die-with-parent follows the thread that started it.
        self._thread = threading.Thread(target=self._keep_warm, name="warm-sandboxes", daemon=True)
        self._thread.start()

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
            warm.discard(self.warm_sandbox)
        if self.size:
            self._note(key)
        return taken

    def _keep_warm(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    ready = Counter(w.key for w in self._ready)
                    targets = warm_targets(self._recent, self.size)
                    surplus, wanted = surplus_and_next(targets, ready)
                    pause = self._retry_at - time.monotonic()
                    if wanted is not None and pause > 0:  # the last start failed
                        wanted = None
                    if surplus or wanted is not None:
                        break
                    self._cond.wait(pause if pause > 0 else None)
                discard = []
                for warm in list(self._ready):  # the oldest first
                    if surplus[warm.key] > 0:
                        surplus[warm.key] -= 1
                        self._ready.remove(warm)
                        discard.append(warm)
                self._count += 1
                name = f"{self._prefix}{self._count}"
            for warm in discard:
                warm.discard(self.warm_sandbox)
            if wanted is not None:
                self._start_one(wanted, name)

    def _start_one(self, key: WarmKey, name: str) -> None:
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
            )
        except Exception:
            log.exception("could not start a warm sandbox; attempts start cold meanwhile")
            with self._cond:
                self._retry_at = time.monotonic() + RETRY_SECONDS
            return
        with self._cond:
            self.warm_up_seconds.append(time.monotonic() - began)
            if not self._closed:
                self._ready.append(warm)
                self._cond.notify_all()
                return
        warm.discard(self.warm_sandbox)

    # -- attempts -------------------------------------------------------------------------

    def start(self, launch: AttemptLaunch) -> Handle:
        warm = self._take(WarmKey.of(launch))
        if warm is not None:
            try:
                return self._start_warm(launch, warm)
            except _Cold as exc:
                log.warning("warm sandbox %s not used: %s", warm.name, exc)
                warm.discard(self.warm_sandbox)
        self.cold_starts += 1
        return super().start(launch)

    def _start_warm(self, launch: AttemptLaunch, warm: WarmSandbox) -> Handle:
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
        handle = GroupHandle(
            launch.attempt_id, launch.workdir, sandbox=AttemptSandbox(warm.view, warm.cgroup)
        )
        warm.claimed = True
        self._claimed[launch.attempt_id] = warm
        world = launch.resources.workers
        port = free_port() if world > 1 else None
        try:
            for rank in range(world):
                env = scrubbed_env(
                    launch, base=self.base_env, rank=rank, world_size=world, master_port=port
                )
                read_fd, write_fd = os.pipe()
                try:
                    pid = warm.link.spawn(
                        launch.program,
                        str(warm.bound_at),
                        warm.inside(env, launch.workdir),
                        write_fd,
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

    def poll(self, handle: Handle) -> ExitStatus | None:
        status = super().poll(handle)
        if status is not None:
            warm = self._claimed.pop(handle.attempt_id, None)
            if warm is not None:
                warm.reap()  # its cgroup was killed with the attempt
        return status

    def _reap(self, worker: Worker) -> ExitStatus | None:
        found = self._workers.get(id(worker))
        if found is None:
            return super()._reap(worker)
        warm, pid = found
        status = warm.link.exit_of(pid)
        if status is not None:
            del self._workers[id(worker)]
        return status

    def _signal(self, group: GroupHandle, sig: int) -> None:
        # Its workers' pids are the zygote's PID namespace's: never signalled from here.
        warm = self._claimed.get(group.attempt_id)
        if warm is None:
            super()._signal(group, sig)
        elif sig == signal.SIGKILL:
            warm.cgroup.kill(timeout=0)
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
        self._thread.join(timeout=self.start_timeout + 10)
        with self._cond:
            ready, self._ready = self._ready, []
        for warm in ready:
            warm.discard(self.warm_sandbox)
        super().close()
