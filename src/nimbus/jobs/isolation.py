"""Who job processes run as, and the directories they may use.

A root server runs every attempt as an unprivileged OS user (``nimbus-job`` by default,
the ``job_user`` setting): the executor drops to it in the worker's process after the fork
(``setgroups([])``, ``setgid``, ``setuid``, umask 077), so user code cannot read
NIMBUS_HOME (admin token, metadata database, blob store, deployments' token files), which
the server keeps at 0700/0600 (see :func:`nimbus.server.bootstrap`). What jobs may use:

- ``jobs/`` and ``jobs/<job id>/``: 0711, the server's: traversable, not listable;
- ``jobs/<job id>/<attempt id>/``: the attempt's work directory (HOME), 0700, the job
  user's while the attempt runs, the server's again once it ended (:func:`retire_workdir`);
- ``cache/``: 0711, the server's; ``cache/<keyed hash of the tenant id>/``: that tenant's
  download cache, 0700, the job user's (:class:`TenantCaches`).

All jobs share one uid, so they are kept apart from each other only by paths they cannot
list and cannot guess (random job and attempt ids, a keyed hash per tenant), and from
finished attempts by ownership. Running jobs of one uid can signal and, for a process
that exec'ed, ptrace or read the ``/proc/<pid>/environ`` of one another: one uid per
attempt would close that.

A server that is not root runs jobs as itself (with a warning): isolation needs root. So
does, with ``auto``, a root server whose job user cannot reach the interpreter, the
``nimbus`` package or NIMBUS_HOME (a 0700 directory on the way, such as /root): it says
which directory, and runs jobs as root. A user named in the setting is required instead:
the server does not start without it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbus.errors import InvalidInput

log = logging.getLogger(__name__)

JOB_USER = "nimbus-job"
FALLBACK_USER = "nobody"  # when the system user cannot be created
JOB_UMASK = 0o077
WORKDIR_MODE = 0o700
TRAVERSE_MODE = 0o711  # others may pass through to a path they know, never list it
USERADD = ("--system", "--no-create-home", "--shell", "/usr/sbin/nologin")

# Run as the job user by :func:`preflight`: what a job needs, checked by the kernel itself.
_PREFLIGHT = """\
import importlib.util, json, os, sys
problems = [p for p in json.loads(sys.argv[1]) if not os.access(p, os.X_OK)]
spec = importlib.util.find_spec("nimbus")
where = list(spec.submodule_search_locations or []) if spec else []
if not where or not os.access(where[0], os.R_OK | os.X_OK):
    problems.append(where[0] if where else "nimbus")
print(json.dumps(problems))
"""


@dataclass(frozen=True)
class JobUser:
    """The OS user attempts run as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> JobUser:
        """The user called ``name`` (or with that numeric uid); KeyError if there is none."""
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict[str, Any]:
        """``subprocess.Popen`` arguments that start a process as this user, with no
        supplementary groups (the server's, root's among them, would otherwise stay)."""
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def spawn_fields(self) -> dict[str, int]:
        """What the fork server's zygote needs to drop to this user in a child."""
        return {"uid": self.uid, "gid": self.gid}


def choose_user(setting: str, euid: int) -> str | None:
    """Which user the ``job_user`` setting asks for, for a server running as ``euid``:
    a name, or None for the server's own user."""
    value = setting.strip()
    if value.lower() == "none":
        return None
    if value.lower() == "auto":
        return JOB_USER if euid == 0 else None
    if not value:
        raise InvalidInput("job_user must be 'auto', 'none' or a user name")
    return value


def ensure_system_user(name: str = JOB_USER) -> JobUser:
    """The system user ``name``, created (``useradd --system``) if missing; ``nobody`` when
    it cannot be created."""
    try:
        return JobUser.lookup(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or shutil.which("useradd", path="/usr/sbin:/sbin")
    if useradd is None:
        log.warning(
            "useradd not found: jobs run as %r instead of a dedicated %r", FALLBACK_USER, name
        )
    else:
        done = subprocess.run(
            [useradd, *USERADD, name], capture_output=True, text=True, check=False
        )
        try:
            return JobUser.lookup(name)  # created, here or by a server starting beside us
        except KeyError:
            log.warning(
                "could not create the user %r (%s): jobs run as %r",
                name,
                done.stderr.strip() or f"useradd exited {done.returncode}",
                FALLBACK_USER,
            )
    return JobUser.lookup(FALLBACK_USER)


def preflight(user: JobUser, paths: Sequence[Path], python: str = sys.executable) -> list[str]:
    """Why ``user`` could not run jobs: the interpreter, the ``nimbus`` package or one of
    ``paths`` (directories it must pass through) out of its reach. Empty when it can."""
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
        where = _blocked_note(Path(python).resolve(), user)
        return [f"cannot run {python}: {exc.strerror}{where}"]
    if done.returncode != 0:
        return [f"{python} failed as {user.name}: {done.stderr.strip()[-500:]}"]
    blocked = json.loads(done.stdout)
    return [f"cannot reach {path}{_blocked_note(Path(path), user)}" for path in blocked]


def _blocked_note(path: Path, user: JobUser) -> str:
    """Names the first directory on the way to ``path`` that ``user`` may not pass."""
    for directory in [*reversed(path.parents), path]:
        try:
            info = directory.stat()
        except OSError:
            return ""
        if stat.S_ISDIR(info.st_mode) and not _may_search(info, user):
            owner = info.st_uid
            return (
                f" ({directory} is mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}: "
                f"not traversable by {user.name})"
            )
    return ""


def _may_search(info: os.stat_result, user: JobUser) -> bool:
    if info.st_uid == user.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == user.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def resolve_job_user(
    setting: str, reach: Sequence[Path], *, euid: int | None = None, python: str = sys.executable
) -> JobUser | None:
    """The user jobs run as, per the ``job_user`` setting; None: the server's own user.

    ``auto`` is lenient: a server that is not root, or whose job user cannot reach the
    interpreter or ``reach`` (NIMBUS_HOME's parent), runs jobs as itself and logs why.
    A user named explicitly is required: InvalidInput when it cannot be used.
    """
    euid = os.geteuid() if euid is None else euid
    name = choose_user(setting, euid)
    auto = setting.strip().lower() == "auto"
    if name is None:
        if auto:
            log.warning(
                "job isolation is off: jobs run as this server's own user (uid %d) "
                "and can read NIMBUS_HOME; start the server as root to run them as "
                "%r (NIMBUS_JOB_USER)",
                euid,
                JOB_USER,
            )
        return None
    try:
        user = ensure_system_user(name) if auto else JobUser.lookup(name)
    except KeyError:
        raise InvalidInput(f"job_user {name!r}: no such user") from None
    if user.uid == euid:
        return None
    if euid != 0:
        raise InvalidInput(f"running jobs as {user.name!r} needs a server started as root")
    problems = preflight(user, reach, python)
    if not problems:
        log.info("jobs run as %s (uid %d, gid %d)", user.name, user.uid, user.gid)
        return user
    reason = f"jobs cannot run as {user.name!r}: {'; '.join(problems)}"
    if not auto:
        raise InvalidInput(reason)
    log.warning(
        "job isolation is off: %s. Jobs run as root and can read NIMBUS_HOME. Let "
        "%s pass the directories named (chmod o+x), or keep Python, Nimbus and "
        "NIMBUS_HOME where it can; NIMBUS_JOB_USER=none accepts this",
        reason,
        user.name,
    )
    return None


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


def retire_workdir(workdir: Path, owner: JobUser | None) -> None:
    """Once an attempt ended, give its work directory back to the server: other jobs,
    which share the job user's uid, can no longer enter it even knowing its path."""
    if owner is None:
        return
    try:
        os.chown(workdir, os.geteuid(), os.getegid(), follow_symlinks=False)
        os.chmod(workdir, WORKDIR_MODE)
    except FileNotFoundError:
        pass


def prepare_root(root: Path, owner: JobUser | None) -> None:
    """A directory jobs pass through (the jobs or cache root): the server's, 0711 when
    jobs run as another user, 0700 otherwise."""
    root.mkdir(mode=WORKDIR_MODE, parents=True, exist_ok=True)
    os.chmod(root, TRAVERSE_MODE if owner is not None else WORKDIR_MODE)


class TenantCaches:
    """One download cache per tenant, ``<root>/<keyed hash of the tenant id>/``.

    The names are HMAC-SHA256 of the tenant id under ``key`` (a server secret), so a job
    cannot find another tenant's cache: the root is traversable, not listable. A tenant's
    jobs share its cache; it is the job user's, 0700.
    """

    def __init__(self, root: Path, key: bytes, owner: JobUser | None) -> None:
        self.root, self.key, self.owner = Path(root), key, owner
        prepare_root(self.root, owner)

    def name(self, tenant_id: int | None) -> str:
        digest = hmac.new(self.key, f"tenant:{tenant_id}".encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def dir_for(self, tenant_id: int | None) -> Path:
        """The tenant's cache directory, created (or handed to the job user) as needed."""
        path = self.root / self.name(tenant_id)
        uid, gid = (self.owner.uid, self.owner.gid) if self.owner else (os.geteuid(), os.getegid())
        try:
            if path.lstat().st_uid != uid:
                # Left by another job user. Never chown a tree a job controls (a symlink
                # swapped in would hand the job any file): it is a cache, start it afresh.
                shutil.rmtree(path)
        except FileNotFoundError:
            pass
        path.mkdir(mode=WORKDIR_MODE, exist_ok=True)
        os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, WORKDIR_MODE)
        return path
