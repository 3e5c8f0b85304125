"""Jobs as an unprivileged user: real processes on both executors, started by root.

The executor tests need root (they are, here and in CI): without it they are skipped, as
they are when the job user cannot reach the interpreter (a 0700 directory on the way)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.errors import InvalidInput
from nimbus.jobs.executors import make_executor
from nimbus.jobs.executors.base import Executor, ExitStatus
from nimbus.jobs.isolation import (
    JOB_USER,
    JobUser,
    TenantCaches,
    choose_user,
    ensure_system_user,
    preflight,
    prepare_workdir,
    resolve_job_user,
)
from tests.jobs.conftest import GRACE, Run


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory the job user may pass through (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="nimbus-isolation-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def user(base: Path) -> JobUser:
    if os.geteuid() != 0:
        pytest.skip("dropping to a job user needs root")
    found = ensure_system_user()
    if problems := preflight(found, [base]):
        pytest.skip(f"the job user cannot run jobs on this machine: {'; '.join(problems)}")
    return found


@pytest.fixture(scope="module", params=["local", "forkserver"])
def isolated(request: pytest.FixtureRequest, base: Path, user: JobUser) -> Iterator[Executor]:
    ex = make_executor(
        request.param,
        base / request.param / "jobs",
        preload=["json"],
        grace_seconds=GRACE,
        run_as=user,
    )
    yield ex
    ex.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


WHO_AM_I = """
import ctypes, json, os
sig = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
umask = os.umask(0)
os.umask(umask)
try:
    os.setuid(0)
    regained = True
except PermissionError:
    regained = False
open("written", "w").write("x")
print(json.dumps({"uid": os.getresuid(), "gid": os.getresgid(), "groups": os.getgroups(),
                  "umask": umask, "home": os.environ["HOME"], "cwd": os.getcwd(),
                  "dir_owner": os.stat(".").st_uid, "pdeathsig": sig.value,
                  "regained": regained, "file_mode": os.stat("written").st_mode & 0o777}))
"""


def test_a_job_runs_as_the_job_user_for_good(isolated: Executor, user: JobUser) -> None:
    run = Run(isolated, WHO_AM_I)
    assert run.wait() == ExitStatus(0), run.output
    seen = json.loads(run.output)
    assert seen["uid"] == [user.uid] * 3 and seen["gid"] == [user.gid] * 3
    assert seen["groups"] == [] and not seen["regained"]
    assert seen["umask"] == 0o077 and seen["file_mode"] == 0o600
    assert seen["home"] == seen["cwd"] == str(run.workdir)
    assert seen["dir_owner"] == user.uid  # its own while it runs...
    if isolated.__class__.__name__ == "ForkServerExecutor":
        assert seen["pdeathsig"] == 9  # set after the drop, which would have cleared it
    # ...the server's once it ended: later jobs of the same uid cannot enter it.
    assert run.workdir.stat().st_uid == os.geteuid() and mode(run.workdir) == 0o700
    jobs_root = run.workdir.parent.parent
    assert mode(jobs_root) == mode(run.workdir.parent) == 0o711
    assert jobs_root.stat().st_uid == run.workdir.parent.stat().st_uid == os.geteuid()


def test_every_worker_drops(isolated: Executor, user: JobUser) -> None:
    run = Run(isolated, "import os; print(os.getresuid(), os.getgroups())", workers=2)
    assert run.wait().ok, run.output
    assert sorted(run.output.splitlines()) == [f"[{rank}] {(user.uid,) * 3} []" for rank in (0, 1)]


PROBE = """
import json, os, sys
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
paths = json.loads(sys.argv[1])
print(json.dumps({
    "secret": attempt(lambda: open(paths["secret"]).read()),
    "private dir": attempt(lambda: os.listdir(paths["private"])),
    "jobs root": attempt(lambda: os.listdir(paths["jobs_root"])),
    "job dir": attempt(lambda: os.listdir(paths["job_dir"])),
    "write in jobs root": attempt(lambda: open(paths["jobs_root"] + "/planted", "w")),
    "ended attempt": attempt(lambda: open(paths["ended"] + "/marker.txt").read()),
    "parent environ": attempt(lambda: open(f"/proc/{os.getppid()}/environ", "rb").read()),
    "server environ": attempt(lambda: open(paths["server_environ"], "rb").read()),
}))
"""


def test_a_job_cannot_read_the_servers_files_or_ended_attempts(
    isolated: Executor, base: Path
) -> None:
    jobs_root: Path = isolated.jobs_root  # type: ignore[attr-defined]
    private = base / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    secret = private.parent / "secret"
    secret.write_text("admin token")
    secret.chmod(0o600)
    ended = Run(isolated, "open('marker.txt', 'w').write('mine')")
    assert ended.wait().ok, ended.output
    paths = {
        "secret": str(secret),
        "private": str(private),
        "jobs_root": str(jobs_root),
        "job_dir": str(ended.workdir.parent),
        "ended": str(ended.workdir),
        "server_environ": f"/proc/{os.getpid()}/environ",
    }
    run = Run(isolated, f"import sys; sys.argv[1:] = [{json.dumps(paths)!r}]\n{PROBE}")
    assert run.wait().ok, run.output
    assert set(json.loads(run.output).values()) == {"PermissionError"}, run.output


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            "local",
            marks=pytest.mark.xfail(
                strict=True,
                reason="residual risk: an exec'ed job is dumpable, so jobs of the same "
                "uid can read its /proc/<pid>/environ; one uid per attempt would close it",
            ),
        ),
        "forkserver",
    ],
)
def test_running_jobs_hide_their_environment_from_each_other(
    base: Path, user: JobUser, kind: str
) -> None:
    """A fork-server child changed user without exec: the kernel made it non-dumpable, so
    a job of the same uid can neither read its /proc/<pid>/environ (the job token) nor
    ptrace it."""
    ex = make_executor(
        kind, base / "dumpable" / kind, preload=["json"], grace_seconds=GRACE, run_as=user
    )
    try:
        victim = Run(ex, "import os, time; print(os.getpid(), flush=True); time.sleep(60)")
        pid = int(victim.wait_output("\n").split()[0])
        thief = Run(ex, f"open('/proc/{pid}/environ', 'rb').read()")
        status = thief.wait()
        ex.kill(victim.handle)
        victim.wait()
        assert status == ExitStatus(1) and "PermissionError" in thief.output, thief.output
    finally:
        ex.close()


def test_workdirs_and_tenant_caches(base: Path, user: JobUser) -> None:
    root = base / "layout" / "jobs"
    root.mkdir(parents=True)
    workdir = root / "job_x" / "att_y"
    prepare_workdir(root, workdir, user)
    assert mode(root / "job_x") == 0o711 and (root / "job_x").stat().st_uid == os.geteuid()
    assert mode(workdir) == 0o700 and workdir.stat().st_uid == user.uid

    caches = TenantCaches(base / "layout" / "cache", b"k" * 32, user)
    one, two = caches.dir_for(1), caches.dir_for(2)
    assert one != two and one == caches.dir_for(1)
    assert caches.name(1) != TenantCaches(base / "other", b"j" * 32, user).name(1)
    assert mode(caches.root) == 0o711 and caches.root.stat().st_uid == os.geteuid()
    assert mode(one) == 0o700 and one.stat().st_uid == user.uid
    os.chown(one, 0, 0)  # left by another user: started afresh, never chowned in place
    (one / "stale").write_text("x")
    assert caches.dir_for(1) == one and not (one / "stale").exists()
    assert one.stat().st_uid == user.uid


@pytest.mark.parametrize(
    ("setting", "euid", "chosen"),
    [
        ("auto", 0, JOB_USER),
        ("auto", 1000, None),
        ("none", 0, None),
        ("NONE", 1000, None),
        ("alice", 0, "alice"),
        ("alice", 1000, "alice"),
    ],
)
def test_choose_user(setting: str, euid: int, chosen: str | None) -> None:
    assert choose_user(setting, euid) == chosen


def test_resolving_the_job_user(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    with caplog.at_level(logging.WARNING, "nimbus.jobs.isolation"):
        assert resolve_job_user("auto", [tmp_path], euid=1000) is None
    assert "job isolation is off" in caplog.text and "root" in caplog.text
    assert resolve_job_user("none", [tmp_path], euid=0) is None
    with pytest.raises(InvalidInput, match="no such user"):
        resolve_job_user("no-such-user-here", [tmp_path], euid=0)
    with pytest.raises(InvalidInput, match="needs a server started as root"):
        resolve_job_user("nobody", [tmp_path], euid=1000)
    assert resolve_job_user(str(os.geteuid()), [tmp_path]) is None  # already that user


def test_a_job_user_that_cannot_reach_home(
    caplog: pytest.LogCaptureFixture, base: Path, user: JobUser
) -> None:
    walled = base / "walled"
    walled.mkdir(mode=0o700)
    (walled / "home").mkdir()
    caplog.set_level(logging.WARNING, "nimbus.jobs.isolation")
    assert resolve_job_user("auto", [walled / "home"]) is None  # lenient: says why
    assert f"{walled} is mode 0700" in caplog.text and "job isolation is off" in caplog.text
    with pytest.raises(InvalidInput, match="cannot reach"):  # named: required
        resolve_job_user(JOB_USER, [walled / "home"])
