"""Whether attempts run isolated, and the directories they may use.

The ``job_isolation`` setting decides (:func:`resolve_isolation`):

- ``sandbox`` (the default): every attempt in a bubblewrap sandbox of its own, with a uid
  of its own and a cgroup (:mod:`nimbus.jobs.sandbox`). That needs a server started as
  root, ``bwrap``, and an interpreter (venv, packages) that an unprivileged uid can read.
  When one is missing the server still serves its API but **runs no job**, and says
  exactly what is missing and how to fix it (its start line, ``/healthz``, the log). Jobs
  never fall back to running as root or as the server's user.
- ``none``: attempts run as the server's own user, unisolated: for a single-user machine.
  Said loudly: the start line, ``/healthz`` and every ``jobs show``.

What attempts may use on disk:

- ``jobs/`` and ``jobs/<job id>/``: the server's, 0711 (``sandbox``) or 0700;
- ``jobs/<job id>/<attempt id>/``: the attempt's work directory (HOME), 0700, the
  attempt's uid's while it runs, the server's again once it ended;
- ``cache/<keyed hash of the tenant id>/``: that tenant's download cache
  (:class:`TenantCaches`); in the sandbox only the attempt's own tenant's is in view.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nimbus.errors import InvalidInput
from nimbus.jobs import cgroups
from nimbus.jobs.sandbox import (
    BWRAP_INSTALL,
    SYSTEM_PATHS,
    AttemptView,
    Sandbox,
    SandboxSettings,
    bwrap_argv,
    covering,
    launcher_argv,
    make_tmp,
    python_paths,
    seccomp_memfd,
    top_symlinks,
)
from nimbus.names import whole_number

log = logging.getLogger(__name__)

JOB_UMASK = 0o007  # the group (the tenant's attempts) shares the tenant's download cache
WORKDIR_MODE = 0o700
TRAVERSE_MODE = 0o711  # others may pass through to a path they know, never list it
NO_ISOLATION = "none"

# Run in a sandbox by :func:`check_sandbox`: what a job needs, imported for real.
JOB_PROBE = "import nimbus.runtime, numpy"


@dataclass(frozen=True)
class JobUser:
    """An OS user (a uid and its group)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> JobUser:
        """The user called ``name`` (or with that numeric uid); KeyError if there is none."""
        uid = whole_number(name, maximum=2**32 - 1)
        entry = pwd.getpwnam(name) if uid is None else pwd.getpwuid(uid)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict[str, Any]:
        """``subprocess.Popen`` arguments that start a process as this user."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


@dataclass
class Isolation:
    """How this server runs jobs: ``mode`` as set; ``sandbox`` when it engaged;
    ``refused``: why no job runs (isolation was asked for and cannot engage);
    ``degraded``: what the sandbox does not enforce here (no writable cgroup controller);
    ``ray_nodes``: the sandbox is made by each Ray node, for the attempts it runs
    (:mod:`nimbus.jobs.executors.ray_sandbox`), not here."""

    mode: Literal["sandbox", "none"]
    sandbox: Sandbox | None = None
    refused: str | None = None
    degraded: list[str] = field(default_factory=list)
    ray_nodes: bool = False

    @property
    def runs_jobs(self) -> bool:
        return self.refused is None

    @property
    def network(self) -> str | None:
        """What network attempts have: ``isolated`` (a namespace of their own, the job API
        over a unix socket), ``host`` (unisolated), ``isolated-single`` (on Ray: isolated
        for one worker, the node's for several), None (no job runs)."""
        if self.refused is not None:
            return None
        if self.mode == NO_ISOLATION:
            return "host"
        return "isolated-single" if self.ray_nodes else "isolated"

    def summary(self) -> str:
        """One line for the start line and ``/healthz``."""
        if self.refused is not None:
            return f"jobs refused: {self.refused}"
        if self.mode == NO_ISOLATION:
            return (
                "jobs run UNISOLATED as this server's user (NIMBUS_JOB_ISOLATION=none): "
                "any job can read NIMBUS_HOME, the admin token and other jobs, and reach "
                "the host's network; uploaded scripts and models are checked unsandboxed too"
            )
        if self.ray_nodes:
            return (
                "jobs run sandboxed on the Ray nodes (each node's agent makes the sandbox: "
                "bubblewrap, a uid and a cgroup per worker; one worker in a network namespace "
                "of its own with only the job API relayed, several on the node's network)"
            )
        limits = f"; limits NOT enforced: {', '.join(self.degraded)}" if self.degraded else ""
        return (
            "jobs run sandboxed (bubblewrap, a uid, a cgroup and a network namespace per "
            f"attempt; the job API over a unix socket, no other network){limits}"
        )


def resolve_isolation(
    mode: str,
    home: Path,
    *,
    instance: str,
    uid_first: int,
    uid_count: int,
    disk_limit_bytes: int,
    pids_per_worker: int,
    keep_failed_seconds: float,
    euid: int | None = None,
    python: str = sys.executable,
    bwrap: str | None = None,
    cgroup_root: Path = cgroups.CGROUP_ROOT,
    job_api_dir: Path | None = None,
    environments: Path | None = None,
    probe_as: tuple[int, int] | None = None,
    probe: str = JOB_PROBE,
    in_home: bool = True,
) -> Isolation:
    """How jobs run, per the ``job_isolation`` setting; never raises for a machine that
    cannot sandbox: the answer says why (``refused``) and the server runs no job.

    ``job_api_dir`` (created here, 0711) holds the control plane's job API socket, bound
    into every sandbox; ``environments`` (created here, 0711), the built job environments,
    bound read-only. The sandbox is tried for real (:func:`check_sandbox`): ``probe``
    run as ``probe_as`` (uid, gid; default: the first of the job range), with work
    directories ``in_home`` (jobs) or not (checks)."""
    value = mode.strip().lower()
    if value == NO_ISOLATION:
        return Isolation("none")
    if value != "sandbox":
        raise InvalidInput(f"job_isolation must be 'sandbox' or 'none', not {mode!r}")
    euid = os.geteuid() if euid is None else euid
    fix_none = "or set NIMBUS_JOB_ISOLATION=none on a single-user machine"
    if euid != 0:
        return Isolation(
            "sandbox",
            refused=f"the sandbox needs a server started as root (it gives every attempt a "
            f"uid of its own); this one runs as uid {euid}: start it as root, {fix_none}",
        )
    found = bwrap or shutil.which("bwrap")
    if found is None:
        return Isolation(
            "sandbox", refused=f"bubblewrap (bwrap) is not installed: {BWRAP_INSTALL}, {fix_none}"
        )
    try:
        read_only = covering([*SYSTEM_PATHS, *python_paths(python)])
    except (OSError, subprocess.SubprocessError) as exc:
        return Isolation("sandbox", refused=f"cannot run {python}: {exc}")
    for shared in (job_api_dir, environments):
        if shared is not None:
            shared.mkdir(mode=TRAVERSE_MODE, parents=True, exist_ok=True)
            os.chmod(shared, TRAVERSE_MODE)
    settings = SandboxSettings(
        bwrap=found,
        home=home,
        read_only=read_only,
        symlinks=top_symlinks(SYSTEM_PATHS),
        uid_first=uid_first,
        uid_count=uid_count,
        disk_limit_bytes=disk_limit_bytes,
        pids_per_worker=pids_per_worker,
        keep_failed_seconds=keep_failed_seconds,
        job_api_dir=job_api_dir,
        environments=environments,
    )
    problem = check_sandbox(settings, python, probe_as=probe_as, probe=probe, in_home=in_home)
    if problem is not None:
        return Isolation("sandbox", refused=f"{problem}; {fix_none}")
    try:
        self_cgroup = Path("/proc/self/cgroup").read_text()
        found_h = cgroups.find_hierarchies(
            self_cgroup, cgroup_root, cgroups.probe(cgroup_root), group=f"nimbus-{instance}"
        )
    except OSError:
        found_h = []
    usable = cgroups.writable(found_h)
    degraded = cgroups.missing(usable)
    swap = cgroups.swap_unlimited(usable, _read("/proc/swaps"))
    sandbox = Sandbox(settings, usable, [*degraded, *([swap] if swap else [])])
    if swap:
        log.warning("job limits: %s", swap)
    if degraded:
        log.warning(
            "job limits are not enforced (%s): --memory, the process limit and --cpus are "
            "accounting only, and an attempt's escaped processes die with its PID "
            "namespace but not by cgroup; run the server with write access to the cgroup "
            "hierarchy (cgroup v2 with memory, pids and cpu delegated, or the v1 "
            "controllers)",
            ", ".join(degraded),
        )
    return Isolation("sandbox", sandbox, degraded=sandbox.degraded)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def check_sandbox(
    settings: SandboxSettings,
    python: str = sys.executable,
    *,
    probe_as: tuple[int, int] | None = None,
    probe: str = JOB_PROBE,
    in_home: bool = True,
) -> str | None:
    """Why a sandboxed child could not start (bwrap failing, the interpreter or its
    packages out of an unprivileged uid's reach, NIMBUS_HOME's work directories too when
    they are ``in_home``); None when one can. The one reachability check for both kinds
    of sandboxed child (attempts, checks of uploads): it runs ``probe`` in a real sandbox
    as ``probe_as`` (uid, gid; default: the first uid of the job range)."""
    sandbox = Sandbox(settings)
    uid, gid = probe_as or (settings.uid_first, settings.tenant_gid(None))
    if in_home and (note := blocked(settings.home.parent, uid, gid)):  # the home: ours
        return (
            f"job uids cannot reach NIMBUS_HOME ({settings.home}), where their work "
            f"directories are: {note}. Let other users pass (chmod o+x) or choose a "
            "NIMBUS_HOME outside it"
        )
    for path in settings.read_only:
        if note := blocked(Path(path), uid, gid):
            return (
                f"job uids cannot reach {path}: {note}. Keep Python and its packages (the "
                f"venv) where any user may read them, or let them pass (chmod o+x)"
            )
    workdir = Path(tempfile.mkdtemp(prefix="nimbus-sandbox-check-"))
    os.chown(workdir, uid, gid)
    make_tmp(workdir, uid, gid)
    view = AttemptView(uid, gid, workdir)
    seccomp_fd = seccomp_memfd()
    argv = launcher_argv(
        [],
        settings.disk_limit_bytes,
        uid,
        gid,
        bwrap_argv(sandbox.settings, view, [python, "-c", probe], seccomp_fd=seccomp_fd),
    )
    try:
        done = subprocess.run(
            argv,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            pass_fds=(seccomp_fd,),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot start a sandbox: {exc}"
    finally:
        os.close(seccomp_fd)
        shutil.rmtree(workdir, ignore_errors=True)
    if done.returncode != 0:
        return f"a sandboxed job cannot start: {done.stderr.strip()[-500:]}"
    return None


def blocked(path: Path, uid: int, gid: int) -> str | None:
    """The first directory on the way to ``path`` that ``uid`` may not pass, described."""
    for directory in [*reversed(path.parents), path]:
        try:
            info = directory.stat()
        except OSError:
            return None
        if stat.S_ISDIR(info.st_mode) and not _may_search(info, uid, gid):
            return (
                f"{directory} is mode {stat.S_IMODE(info.st_mode):04o}, owner {info.st_uid}: "
                "not traversable by other users"
            )
    return None


def _may_search(info: os.stat_result, uid: int, gid: int) -> bool:
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def prepare_workdir(jobs_root: Path, workdir: Path, owner: JobUser | None) -> None:
    """Create an attempt's work directory: ``owner``'s, 0700, below directories that are
    the server's and 0711 up to ``jobs_root`` (a job can enter its own directory without
    listing the others). Idempotent."""
    try:
        between = workdir.relative_to(jobs_root).parts[:-1]
    except ValueError:  # outside the root: only its own mode and owner are ours to set
        workdir.parent.mkdir(parents=True, exist_ok=True)
        between = ()
    directory = jobs_root
    directory.mkdir(parents=True, exist_ok=True)
    for part in between:
        directory = directory / part
        directory.mkdir(mode=TRAVERSE_MODE, exist_ok=True)
        os.chmod(directory, TRAVERSE_MODE)  # the umask narrows mkdir's mode
    workdir.mkdir(mode=WORKDIR_MODE, exist_ok=True)
    if owner is not None:
        os.chown(workdir, owner.uid, owner.gid, follow_symlinks=False)
    os.chmod(workdir, WORKDIR_MODE)


def prepare_root(root: Path, passable: bool) -> None:
    """A directory jobs pass through (the jobs or cache root): the server's, 0711 when
    sandboxed attempts (other uids) must pass it, 0700 otherwise."""
    root.mkdir(mode=WORKDIR_MODE, parents=True, exist_ok=True)
    os.chmod(root, TRAVERSE_MODE if passable else WORKDIR_MODE)


class TenantCaches:
    """One download cache per tenant, ``<root>/<keyed hash of the tenant id>/``.

    The names are HMAC-SHA256 of the tenant id under ``key`` (a server secret), so a job
    cannot find another tenant's cache: the root is traversable, not listable. Sandboxed,
    a tenant's cache is the server's, group ``group(tenant id)`` (the tenant's attempts),
    setgid, 2770, and only the attempt's own tenant's cache is in its view; otherwise 0700.
    """

    def __init__(
        self, root: Path, key: bytes, group: Callable[[int | None], int] | None = None
    ) -> None:
        self.root, self.key, self.group = Path(root), key, group
        prepare_root(self.root, group is not None)

    def name(self, tenant_id: int | None) -> str:
        digest = hmac.new(self.key, f"tenant:{tenant_id}".encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def dir_for(self, tenant_id: int | None) -> Path:
        """The tenant's cache directory, created (or handed back to the server) as needed."""
        path = self.root / self.name(tenant_id)
        try:
            if path.lstat().st_uid != os.geteuid():
                # Left by a job's uid (an older layout). Never chown a tree a job controls
                # (a symlink swapped in would hand the job any file): start it afresh.
                shutil.rmtree(path)
        except FileNotFoundError:
            pass
        path.mkdir(mode=WORKDIR_MODE, exist_ok=True)
        if self.group is None:
            os.chmod(path, WORKDIR_MODE)
        else:
            os.chown(path, os.geteuid(), self.group(tenant_id), follow_symlinks=False)
            os.chmod(path, 0o2770)
        return path
