"""Attempts in the sandbox, on the executor: real processes in bubblewrap, started by root.

Without root or bwrap these tests are skipped (never in CI, where `make services`
installs bubblewrap and the tests run as root)."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.jobs import cgroups
from nimbus.jobs.domain import ExitReason, Resources
from nimbus.jobs.executors import make_executor
from nimbus.jobs.executors.base import Executor, ExitStatus
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.jobs.executors.process import DISK_CHECK_SECONDS
from nimbus.jobs.isolation import Isolation, TenantCaches, resolve_isolation
from nimbus.jobs.sandbox import Sandbox, disk_usage
from tests.helpers import passable_dir
from tests.jobs.conftest import GRACE, Run, wait_gone

MiB = 2**20


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with passable_dir() as path:
        yield path


def isolation(home: Path, *, disk_limit_bytes: int = 32 * MiB) -> Isolation:
    home.mkdir(mode=0o711, exist_ok=True)
    return resolve_isolation(
        "sandbox",
        home,
        instance=f"test-{os.getpid()}",
        uid_first=2_000_000_000,
        uid_count=1000,
        disk_limit_bytes=disk_limit_bytes,
        pids_per_worker=32,
        keep_failed_seconds=3600,
    )


@pytest.fixture(scope="module")
def sandbox(base: Path) -> Sandbox:
    found = isolation(base / "home")
    assert found.sandbox is not None, found.refused
    return found.sandbox


@pytest.fixture(scope="module")
def sandboxed(sandbox: Sandbox, base: Path) -> Iterator[Executor]:
    ex = make_executor("local", base / "home" / "jobs", grace_seconds=GRACE, sandbox=sandbox)
    yield ex
    ex.close()


WHO_AM_I = """
import getpass, json, os
try:
    os.setuid(0)
    regained = True
except OSError:  # EPERM, or EINVAL: uid 0 does not exist in its user namespace
    regained = False
try:
    open("/etc/shadow").read()  # root's, 0640: in view (read-only), not readable
    shadow = "read"
except OSError as exc:
    shadow = type(exc).__name__
print(json.dumps({"uid": os.getresuid(), "groups": os.getgroups(), "pid": os.getpid(),
                  "cwd": os.getcwd(), "home": os.environ["HOME"], "regained": regained,
                  "shadow": shadow, "tmp": os.listdir("/tmp"), "user": getpass.getuser()}))
"""


def test_each_attempt_has_its_own_uid_and_pid_namespace(sandboxed: Executor) -> None:
    first, second = Run(sandboxed, WHO_AM_I), Run(sandboxed, WHO_AM_I)
    assert first.wait().ok and second.wait().ok, first.output + second.output
    one, two = json.loads(first.output), json.loads(second.output)
    assert one["uid"][0] != two["uid"][0] and one["uid"][0] >= 2_000_000_000
    assert one["uid"] == [one["uid"][0]] * 3 and one["groups"] == [] and not one["regained"]
    # bwrap ran as that uid: its user namespace maps to it, not to root outside.
    assert one["shadow"] == "PermissionError"
    assert one["pid"] == two["pid"] == 2  # bwrap's init is 1 in each namespace
    assert one["cwd"] == one["home"] == str(first.workdir)
    # No passwd entry for the uid, yet getpass.getuser() answers (torch 2.11 asks it when
    # torch._dynamo is imported: a sandboxed GPU job failed without it).
    assert one["user"] == "nimbus-job"
    assert set(one["tmp"]) <= {first.workdir.parts[2]}  # a private /tmp (the workdir's path)
    assert not first.workdir.exists()  # succeeded: removed


def test_a_job_cannot_read_root_files_nor_another_running_jobs_environment(
    sandboxed: Executor, base: Path
) -> None:
    """The xfail of the single-uid days: an exec'ed job's /proc/<pid>/environ (its token)
    was readable by every other job of the job user."""
    secret = base / "root-secret"
    secret.write_text("admin token")
    secret.chmod(0o600)
    victim = Run(sandboxed, "import os, time; print(os.getpid(), flush=True); time.sleep(60)")
    victim.wait_output("\n")
    host_pids = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _has_env(p, f"NIMBUS_ATTEMPT_ID={victim.launch.attempt_id}")
    ]
    assert host_pids
    thief = Run(
        sandboxed,
        f"""
import json, os, signal
{ATTEMPT}
print(json.dumps({{
    "secret": attempt(lambda: open({str(secret)!r}).read()),
    "environ": [attempt(lambda: open(f"/proc/{{p}}/environ", "rb").read()) for p in {host_pids}],
    "kill": [attempt(lambda: os.kill(p, signal.SIGKILL)) for p in {host_pids}],
    "others": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}}))
""",
    )
    assert thief.wait().ok, thief.output
    sandboxed.kill(victim.handle)
    assert victim.wait() is not None
    seen = json.loads(thief.output)
    assert seen["secret"] in ("PermissionError", "FileNotFoundError")
    assert "allowed" not in seen["environ"] and "allowed" not in seen["kill"], seen
    assert seen["others"] == [1, 2]  # its init and itself


def _has_env(proc: Path, needle: str) -> bool:
    try:
        return needle.encode() in (proc / "environ").read_bytes()
    except OSError:
        return False


# In a job's code: what an operation raised (its OSError's name), or "allowed".
ATTEMPT = """
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
"""

ESCAPE = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print(os.getpid(), flush=True)
        time.sleep(600)
    os._exit(0)
time.sleep(0.5)
print("parent done", flush=True)
time.sleep(float(sys.argv[1]))
"""


@pytest.mark.parametrize("how", ["ends", "killed"])
def test_escaped_processes_die_with_the_attempt(sandboxed: Executor, how: str) -> None:
    stay = "1" if how == "ends" else "600"
    run = Run(sandboxed, f"import sys; sys.argv[1:] = [{stay!r}]\n{ESCAPE}")
    run.wait_output("parent done")
    group = run.handle.sandbox.cgroup  # type: ignore[attr-defined]
    escaped = group.pids() if group is not None else set()
    assert len(escaped) >= 3  # launcher, bwrap's init, the job, the escapee
    if how == "killed":
        sandboxed.kill(run.handle)
    run.wait()
    assert all(wait_gone(pid) for pid in escaped)


def test_cancel_gives_the_job_its_grace_period(sandboxed: Executor) -> None:
    """SIGTERM reaches the job inside the sandbox, not the launcher outside (whose death
    would SIGKILL it at once)."""
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('graceful', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    run = Run(sandboxed, code)
    run.wait_output("ready")
    sandboxed.kill(run.handle)
    run.wait()
    assert "graceful" in run.output


def test_workers_of_one_attempt_reach_each_other(sandboxed: Executor) -> None:
    code = """
import os, socket, time
port = int(os.environ["MASTER_PORT"])
if os.environ["RANK"] == "0":
    server = socket.create_server(("127.0.0.1", port))
    conn, _ = server.accept()
    print("got", conn.recv(16).decode(), flush=True)
else:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).sendall(b"hello")
            break
        except OSError:
            time.sleep(0.05)
"""
    run = Run(sandboxed, code, workers=2)
    assert run.wait(timeout=30).ok, run.output
    assert "[0] got hello" in run.output


def enforced(sandbox: Sandbox, controller: str) -> None:
    """Skips where this machine's cgroups cannot enforce ``controller``'s limit (the server
    says so at start and runs attempts without it: a GPU machine lent here delegated none)."""
    if not any(controller in h.controllers for h in sandbox.hierarchies):
        pytest.skip(f"no {controller} controller here")


def test_memory_past_the_limit_is_out_of_memory(sandboxed: Executor, sandbox: Sandbox) -> None:
    enforced(sandbox, "memory")
    run = Run(
        sandboxed,
        "x = bytearray(512 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nprint('survived')",
        resources=Resources(memory_bytes=128 * MiB),
    )
    status = run.wait(timeout=60)
    assert status.limit is ExitReason.OUT_OF_MEMORY and "survived" not in run.output
    assert status.outcome().reason is ExitReason.OUT_OF_MEMORY
    assert run.workdir.exists()  # failed: kept for a while


def test_a_fork_bomb_stops_at_the_process_limit(sandboxed: Executor, sandbox: Sandbox) -> None:
    enforced(sandbox, "pids")
    run = Run(
        sandboxed,
        """
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n)
""",
    )
    assert run.wait(timeout=60).ok, run.output
    assert int(run.output.split()[-1]) < 32


def test_a_file_past_the_disk_limit(sandboxed: Executor) -> None:
    run = Run(sandboxed, "open('big', 'wb').write(b'x' * (64 * 2**20))")
    status = run.wait(timeout=60)
    assert status.limit is ExitReason.DISK_LIMIT, (status, run.output)
    assert (run.workdir / "big").stat().st_size <= 32 * MiB


def test_many_files_past_the_disk_limit(sandboxed: Executor) -> None:
    code = (
        "import time\nfor i in range(8):\n    open(f'f{i}', 'wb').write(b'x' * (8 * 2**20))\n"
        "print('written', flush=True)\ntime.sleep(30)"
    )
    run = Run(sandboxed, code)
    status = run.wait(timeout=60)
    assert status.limit is ExitReason.DISK_LIMIT, (status, run.output)


def test_the_fork_server_with_the_sandbox_starts_attempts_in_it(
    sandbox: Sandbox, base: Path
) -> None:
    ex = make_executor(
        "forkserver", base / "home" / "jobs", preload=["json"], grace_seconds=GRACE, sandbox=sandbox
    )
    try:
        assert isinstance(ex, LocalExecutor) and ex.sandbox is sandbox  # never unsandboxed
        run = Run(ex, "import os; print(os.getuid())")
        assert run.wait().ok and int(run.output) >= 2_000_000_000
    finally:
        ex.close()


def test_the_sandbox_refuses_without_root_or_bwrap_and_none_is_explicit(base: Path) -> None:
    home = base / "refusals"
    not_root = resolve_isolation(
        "sandbox",
        home,
        instance="x",
        uid_first=2_000_000_000,
        uid_count=10,
        disk_limit_bytes=MiB,
        pids_per_worker=16,
        keep_failed_seconds=0,
        euid=1000,
    )
    assert not not_root.runs_jobs and "root" in str(not_root.refused)
    assert "NIMBUS_JOB_ISOLATION=none" in str(not_root.refused)
    no_bwrap = resolve_isolation(
        "sandbox",
        home,
        instance="x",
        uid_first=2_000_000_000,
        uid_count=10,
        disk_limit_bytes=MiB,
        pids_per_worker=16,
        keep_failed_seconds=0,
        bwrap="/nonexistent/bwrap",
    )
    assert not no_bwrap.runs_jobs and "bwrap" in str(no_bwrap.refused)
    unisolated = resolve_isolation(
        "none",
        home,
        instance="x",
        uid_first=1,
        uid_count=1,
        disk_limit_bytes=1,
        pids_per_worker=16,
        keep_failed_seconds=0,
    )
    assert unisolated.runs_jobs and unisolated.sandbox is None
    assert "UNISOLATED" in unisolated.summary()


def test_an_interpreter_job_uids_cannot_reach_is_refused_by_name(base: Path) -> None:
    """Finding 1: a venv under a 0700 directory (/root) meant jobs ran as root."""
    walled = base / "walled"
    walled.mkdir(mode=0o700)
    (walled / "home").mkdir(mode=0o700)
    refused = isolation(walled / "home")
    assert not refused.runs_jobs
    assert f"{walled} is mode 0700" in str(refused.refused), refused.refused


def test_tenant_caches_are_the_servers_in_the_tenants_group(base: Path) -> None:
    caches = TenantCaches(base / "caches", b"k" * 32, lambda tenant: 3_000_000 + (tenant or 0))
    one, two = caches.dir_for(1), caches.dir_for(2)
    assert one != two and caches.name(1) != TenantCaches(base / "c2", b"j" * 32).name(1)
    assert stat.S_IMODE(caches.root.stat().st_mode) == 0o711
    assert stat.S_IMODE(one.stat().st_mode) == 0o2770 and one.stat().st_gid == 3_000_001
    assert one.stat().st_uid == os.geteuid()
    os.chown(one, 12345, 0)  # left by a job's uid (older layout): started afresh
    (one / "stale").write_text("x")
    assert caches.dir_for(1) == one and not (one / "stale").exists()


def test_unsandboxed_executors_still_report_plain_statuses(base: Path) -> None:
    ex = LocalExecutor(base / "plain" / "jobs", grace_seconds=GRACE)
    try:
        run = Run(ex, "raise SystemExit(4)")
        assert run.wait() == ExitStatus(4)
    finally:
        ex.close()


IGNORES_SIGXFSZ = """
import os, signal, sys
how = signal.SIG_IGN if sys.argv[1] == "ignore" else (lambda *_: print("caught", flush=True))
try:
    signal.signal(signal.SIGXFSZ, how)
except OSError as exc:
    print("no handler:", exc, flush=True)
for i in range(4):  # past the limit, then hide it and go on
    try:
        with open(f"f{i}", "wb") as out:
            out.write(b"x" * (48 * 2**20))
    except OSError as exc:
        print("refused:", exc, flush=True)
    if os.path.exists(f"f{i}"):
        os.remove(f"f{i}")
raise SystemExit(3)
"""


@pytest.mark.parametrize("how", ["ignore", "catch"])
def test_a_job_ignoring_or_catching_sigxfsz_still_ends_at_the_disk_limit(
    sandboxed: Executor, how: str
) -> None:
    run = Run(sandboxed, f"import sys; sys.argv[1:] = [{how!r}]\n{IGNORES_SIGXFSZ}")
    status = run.wait(timeout=60)
    assert status.limit is ExitReason.DISK_LIMIT, (status, run.output)
    assert "caught" not in run.output and "refused" not in run.output, run.output


FILLS_TMP = """
n = 0
try:
    for i in range(16):  # 64 MiB in 4 MiB files: each under the per-file limit
        with open(f"/tmp/f{i}", "wb") as out:
            out.write(b"x" * (4 * 2**20))
        n += 1
except OSError as exc:
    print("refused:", exc, flush=True)
print("wrote", n, flush=True)
raise SystemExit(3)
"""


def test_filling_tmp_ends_at_the_disk_limit(sandboxed: Executor) -> None:
    """/tmp counts against the disk limit with the work directory (on disk, not in the
    host's memory)."""
    run = Run(sandboxed, FILLS_TMP)
    status = run.wait(timeout=60)
    assert status.limit is ExitReason.DISK_LIMIT, (status, run.output)


def test_swap_is_limited_with_memory_under_cgroup_v1(sandboxed: Executor) -> None:
    run = Run(
        sandboxed,
        "import time; print('up', flush=True); time.sleep(60)",
        resources=Resources(memory_bytes=128 * MiB),
    )
    try:
        run.wait_output("up")
        group = run.handle.sandbox.cgroup  # type: ignore[attr-defined]
        memsw = [
            d / "memory.memsw.limit_in_bytes"
            for h, d in zip(group.hierarchies, group.dirs, strict=True)
            if h.version == 1 and "memory" in h.controllers
        ]
        if not memsw or not memsw[0].exists():
            pytest.skip("no cgroup v1 memory controller with swap accounting here")
        assert int(memsw[0].read_text()) == 128 * MiB
    finally:
        sandboxed.kill(run.handle)
        run.wait()


def test_an_attempt_weighs_as_its_cpus_busy_threads(sandboxed: Executor, sandbox: Sandbox) -> None:
    """Its cgroup's scheduling weight is its CPUs' (a default cgroup weighs as one thread),
    its quota may be spent in bursts where the kernel has them, and the base directory
    holding every attempt weighs as the machine's CPUs."""
    enforced(sandbox, "cpu")
    run = Run(
        sandboxed,
        "import time; print('up', flush=True); time.sleep(60)",
        resources=Resources(cpus=2),
    )
    try:
        run.wait_output("up")
        group = run.handle.sandbox.cgroup  # type: ignore[attr-defined]
        found = [(h, d) for h, d in zip(group.hierarchies, group.dirs, strict=True)]
        h, directory = next((h, d) for h, d in found if "cpu" in h.controllers)
        weight, burst = (
            ("cpu.weight", "cpu.max.burst")
            if h.version == 2
            else ("cpu.shares", "cpu.cfs_burst_us")
        )
        assert int((directory / weight).read_text()) == cgroups.cpu_weight(h.version, 2)
        assert int((directory.parent / weight).read_text()) == cgroups.cpu_weight(
            h.version, os.cpu_count() or 1
        )
        if (directory / burst).exists():
            assert int((directory / burst).read_text()) == 2 * cgroups.CPU_PERIOD_US
    finally:
        sandboxed.kill(run.handle)
        run.wait()


MANY_FILES = """
import os, time
os.mkdir("many")
for i in range(100_000):
    open(f"many/{i}", "wb").close()
print("made", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_the_disk_check_of_100k_files_does_not_stall_polling(sandboxed: Executor) -> None:
    """The scheduler thread polls attempts; the work directory's walk happens elsewhere."""
    run = Run(sandboxed, MANY_FILES)
    try:
        run.wait_output("made", timeout=120)
        started = time.perf_counter()
        disk_usage(run.workdir)
        walk = time.perf_counter() - started
        slowest = 0.0
        until = time.monotonic() + 3 * DISK_CHECK_SECONDS
        while time.monotonic() < until:
            started = time.perf_counter()
            assert sandboxed.poll(run.handle) is None, run.output
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.01)
        assert slowest < walk / 2, (slowest, walk)
    finally:
        sandboxed.kill(run.handle)
        run.wait(timeout=60)
