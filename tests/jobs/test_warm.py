"""Warm sandboxes: attempts started in a sandbox made before they were known, with real
processes in bubblewrap, started by root (as tests/jobs/test_isolation.py: CI runs them as
root with bubblewrap installed). Each attack of issue 8 again, through the warm path."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.jobs import cgroups
from nimbus.jobs.domain import ExitReason, Resources
from nimbus.jobs.executors import make_executor
from nimbus.jobs.executors.base import ExitStatus
from nimbus.jobs.executors.warm import (
    WARM_DIR,
    WarmKey,
    WarmSandbox,
    WarmSandboxExecutor,
    in_background,
    surplus_and_next,
    warm_targets,
)
from nimbus.jobs.executors.zygote_link import ZygoteLink
from nimbus.jobs.gpus import GpuSlots, GpusUnavailable
from nimbus.jobs.isolation import TenantCaches
from nimbus.jobs.sandbox import TMP_NAME, Sandbox, purge_workdirs
from tests.helpers import passable_dir
from tests.jobs.conftest import GRACE, Run, wait_gone
from tests.jobs.test_isolation import ATTEMPT, ESCAPE, WHO_AM_I, isolation

MiB = 2**20
A, B, C = WarmKey(1, "/c/1"), WarmKey(2, "/c/2"), WarmKey(3, "/c/3")


def test_warm_targets_follow_the_tenants_seen_last() -> None:
    assert warm_targets([], 2) == Counter()
    assert warm_targets([A], 2) == Counter({A: 2})  # a burst of one tenant's jobs
    assert warm_targets([B, A, B], 2) == Counter({B: 1, A: 1})
    assert warm_targets([C, B, A], 2) == Counter({C: 1, B: 1})  # A is forgotten
    assert warm_targets([A, B], 3) == Counter({A: 2, B: 1})
    assert warm_targets([A], 0) == Counter()


def test_surplus_is_discarded_and_the_most_recent_want_comes_first() -> None:
    targets = Counter({B: 1, A: 1})
    assert surplus_and_next(targets, Counter({A: 2})) == (Counter({A: 1}), B)
    assert surplus_and_next(targets, Counter({A: 1, B: 1})) == (Counter(), None)
    assert surplus_and_next(Counter({C: 2}), Counter({A: 1})) == (Counter({A: 1}), C)
    # Those starting count towards the target, not as surplus.
    assert surplus_and_next(targets, Counter({A: 1}), Counter({B: 1})) == (Counter(), None)
    assert surplus_and_next(Counter({A: 2}), Counter({A: 1}), Counter({A: 1})) == (Counter(), None)
    assert surplus_and_next(Counter({A: 2}), Counter(), Counter({A: 1})) == (Counter(), A)


def test_a_warm_sandbox_starts_in_the_background_only_while_another_of_its_key_waits() -> None:
    assert in_background(A, Counter({A: 1}))  # topping up: idle CPU time only
    assert not in_background(A, Counter({B: 2}))  # A's next attempt would start cold
    assert not in_background(A, Counter())


def test_purging_old_work_directories_leaves_waiting_warm_sandboxes_alone(tmp_path: Path) -> None:
    waiting, old = tmp_path / WARM_DIR / "warm-1", tmp_path / "job1" / "att1"
    waiting.mkdir(parents=True)
    old.mkdir(parents=True)
    past = time.time() - 100
    for path in (waiting, waiting.parent, old, old.parent):
        os.utime(path, (past, past))
    assert purge_workdirs(tmp_path, 50) == [old]
    assert waiting.exists()


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with passable_dir() as path:
        yield path


@pytest.fixture(scope="module")
def sandbox(base: Path) -> Sandbox:
    found = isolation(base / "home")
    assert found.sandbox is not None, found.refused
    return found.sandbox


@pytest.fixture(scope="module")
def caches(sandbox: Sandbox, base: Path) -> TenantCaches:
    return TenantCaches(base / "home" / "cache", b"k" * 32, sandbox.settings.tenant_gid)


@pytest.fixture(scope="module")
def warm(sandbox: Sandbox, base: Path) -> Iterator[WarmSandboxExecutor]:
    ex = make_executor(
        "forkserver",
        base / "home" / "jobs",
        preload=["json"],
        grace_seconds=GRACE,
        sandbox=sandbox,
        warm=3,
    )
    assert isinstance(ex, WarmSandboxExecutor)
    yield ex
    ex.close()


def warm_run(
    ex: WarmSandboxExecutor,
    code: str,
    *,
    tenant: int | None = None,
    caches: TenantCaches | None = None,
    **kwargs: object,
) -> Run:
    """An attempt that must start warm: waits for a warm sandbox of its tenant first. Once,
    a ready sandbox was found gone when the attempt came (under CI's load; the executor
    logs why and starts the attempt cold, as it should): that run is killed and the attempt
    made again in another; twice fails."""
    cache = caches.dir_for(tenant) if caches is not None else None
    extra = {"NIMBUS_CACHE_DIR": str(cache)} if cache is not None else None
    for _ in range(2):
        ex.expect(tenant, cache)
        assert ex.wait_warm(tenant, cache, timeout=60)
        before = ex.warm_starts
        run = Run(ex, code, tenant_id=tenant, extra_env=extra, **kwargs)  # type: ignore[arg-type]
        if ex.warm_starts == before + 1:
            return run
        ex.kill(run.handle)
        run.wait(timeout=60)
    raise AssertionError("started cold twice")


def test_a_warm_attempt_has_its_own_uid_pid_namespace_and_work_directory(
    warm: WarmSandboxExecutor,
) -> None:
    first, second = warm_run(warm, WHO_AM_I), warm_run(warm, WHO_AM_I)
    assert first.wait().ok and second.wait().ok, first.output + second.output
    one, two = json.loads(first.output), json.loads(second.output)
    assert one["uid"][0] != two["uid"][0] and one["uid"][0] >= 2_000_000_000
    assert one["uid"] == [one["uid"][0]] * 3 and one["groups"] == [] and not one["regained"]
    assert one["shadow"] == "PermissionError"
    assert one["pid"] == two["pid"] == 3  # bwrap's init is 1, the zygote 2
    # Its work directory was bound in before the attempt was known: it sees it there.
    assert one["cwd"] == one["home"] and f"/{WARM_DIR}/" in one["cwd"]
    assert one["cwd"] != two["cwd"]
    assert set(one["tmp"]) <= {first.workdir.parts[2]}  # a private /tmp
    assert not first.workdir.exists()  # succeeded: removed, like a cold attempt's


def test_the_attempts_files_are_in_its_work_directory(warm: WarmSandboxExecutor) -> None:
    run = warm_run(
        warm,
        "import json; print(open('job.json').read()); open('made', 'w').write('x'); 1/0",
        files={"job.json": json.dumps({"attempt": "mine"})},
    )
    assert not run.wait().ok
    assert '"attempt": "mine"' in run.output
    assert (run.workdir / "made").read_text() == "x"  # failed: kept, where attempts' are
    assert run.workdir.stat().st_uid == os.geteuid()  # handed back to the server


def test_a_warm_attempt_cannot_reach_secrets_other_jobs_or_another_tenants_cache(
    warm: WarmSandboxExecutor, base: Path, caches: TenantCaches
) -> None:
    secret = base / "root-secret"
    secret.write_text("admin token")
    secret.chmod(0o600)
    victim = warm_run(
        warm,
        "import os, time\nopen(os.environ['NIMBUS_CACHE_DIR'] + '/data', 'w').write('clean')\n"
        "print(os.getpid(), flush=True); time.sleep(60)",
        tenant=1,
        caches=caches,
    )
    victim.wait_output("\n")
    group = victim.handle.sandbox.cgroup  # type: ignore[attr-defined]
    host_pids = sorted(group.pids())
    # The job token reached the zygote over its socket: no process environment holds it.
    for pid in host_pids:
        assert b"njt_secret" not in Path(f"/proc/{pid}/environ").read_bytes()
    victim_cache = caches.dir_for(1)
    thief = warm_run(
        warm,
        f"""
import json, os, signal
{ATTEMPT}
print(json.dumps({{
    "secret": attempt(lambda: open({str(secret)!r}).read()),
    "environ": [attempt(lambda: open(f"/proc/{{p}}/environ", "rb").read()) for p in {host_pids}],
    "kill": [attempt(lambda: os.kill(p, signal.SIGKILL)) for p in {host_pids}],
    "cache": attempt(lambda: open({str(victim_cache)!r} + "/data", "w").write("poison")),
    "plant": attempt(lambda: open({str(victim_cache)!r} + "/planted", "w")),
    "own cache": attempt(lambda: open(os.environ["NIMBUS_CACHE_DIR"] + "/mine", "w")),
    "others": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}}))
""",
        tenant=2,
        caches=caches,
    )
    assert thief.wait().ok, thief.output
    seen = json.loads(thief.output)
    assert victim.handle.sandbox.view.gid != thief.handle.sandbox.view.gid  # type: ignore[attr-defined]
    assert warm.poll(victim.handle) is None  # the SIGKILLs did not reach it
    warm.kill(victim.handle)
    victim.wait()
    assert seen["secret"] in ("PermissionError", "FileNotFoundError")
    assert "allowed" not in seen["environ"] and "allowed" not in seen["kill"], seen
    assert seen["cache"] != "allowed" and seen["plant"] != "allowed", seen
    assert seen["own cache"] == "allowed"
    assert seen["others"] == [1, 2, 3]  # bwrap's init, its zygote, itself
    assert (victim_cache / "data").read_text() == "clean"


@pytest.mark.parametrize("how", ["ends", "killed"])
def test_escaped_processes_die_with_the_warm_attempt(warm: WarmSandboxExecutor, how: str) -> None:
    stay = "1" if how == "ends" else "600"
    run = warm_run(warm, f"import sys; sys.argv[1:] = [{stay!r}]\n{ESCAPE}")
    run.wait_output("parent done")
    group = run.handle.sandbox.cgroup  # type: ignore[attr-defined]
    escaped = group.pids()
    assert len(escaped) >= 4  # launcher, bwrap's init, the zygote, the job, the escapee
    if how == "killed":
        warm.kill(run.handle)
    run.wait()
    assert all(wait_gone(pid) for pid in escaped)


def test_cancel_gives_the_warm_job_its_grace_period(warm: WarmSandboxExecutor) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: (print('graceful', flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\ntime.sleep(60)"
    )
    run = warm_run(warm, code)
    run.wait_output("ready")
    warm.kill(run.handle)
    assert run.wait().ok and "graceful" in run.output


def cpu_weights(ex: WarmSandboxExecutor) -> dict[str, int]:
    """The CPU weight of each of ``ex``'s warm sandboxes' cgroups, by name."""
    h = next((h for h in ex.warm_sandbox.hierarchies if "cpu" in h.controllers), None)
    if h is None:
        pytest.skip("no cpu controller here")
    name = "cpu.weight" if h.version == 2 else "cpu.shares"
    return {
        d.name: int((d / name).read_text()) for d in h.base.glob(f"{ex._prefix}*") if d.is_dir()
    }


def wait_ready(ex: WarmSandboxExecutor, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(ex._ready) < count:
        assert time.monotonic() < deadline, f"{len(ex._ready)} of {count} warm sandboxes ready"
        time.sleep(0.02)


def test_the_pool_refills_at_one_cpus_weight_when_empty_else_in_the_background(
    sandbox: Sandbox, base: Path
) -> None:
    """A warm sandbox started while none of its key is ready imports at one CPU's weight
    (the key's next attempt would otherwise start cold, importing on its own critical
    path); one that tops up takes only idle CPU; the claim gives the attempt's weight."""
    ex = WarmSandboxExecutor(
        base / "home" / "jobs-weights", sandbox=sandbox, size=2, preload=["json"]
    )
    try:
        ex.expect(31)
        wait_ready(ex, 2)
        weights = cpu_weights(ex)
        version = next(h.version for h in sandbox.hierarchies if "cpu" in h.controllers)
        first = f"{ex._prefix}1"
        assert weights[first] == cgroups.cpu_weight(version, 1)  # none was ready at its start
        run = warm_run(
            ex,
            "import time; print('up', flush=True); time.sleep(60)",
            tenant=31,
            resources=Resources(cpus=2),
        )
        run.wait_output("up")
        wait_ready(ex, 2)
        weights = cpu_weights(ex)
        group = run.handle.sandbox.cgroup  # type: ignore[attr-defined]
        assert weights[group.dirs[0].name] == cgroups.cpu_weight(version, 2)
        refill = f"{ex._prefix}3"  # started while the other one was ready
        assert weights[refill] == cgroups.cpu_weight(version, 0)
        ex.kill(run.handle)
        run.wait()
    finally:
        ex.close()


GATE = """import os, pathlib, time
here = pathlib.Path(__file__).parent
while not (here / "go").exists():
    time.sleep(0.01)
if (here / "die").exists():
    os._exit(3)
"""


@pytest.fixture
def gated(
    sandbox: Sandbox, base: Path, caches: TenantCaches
) -> Iterator[tuple[WarmSandboxExecutor, Path]]:
    """An executor whose warm sandboxes for tenant 41 are ready only once the test
    writes ``go`` in that tenant's cache (their preload waits for it there), and fail to
    start when it also wrote ``die``."""
    cache = caches.dir_for(41)
    (cache / "nimbus_gate.py").write_text(GATE)
    (cache / "nimbus_gate.py").chmod(0o644)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(cache)}
    ex = WarmSandboxExecutor(
        base / "home" / "jobs-gated",
        sandbox=sandbox,
        size=1,
        preload=["nimbus_gate"],
        base_env=env,
        start_timeout=30,
    )
    ex.expect(41, cache)
    deadline = time.monotonic() + 30
    while not cpu_weights(ex):  # its warm sandbox is starting, held at the gate
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        yield ex, cache
    finally:
        (cache / "go").touch()
        ex.close()
        for name in ("go", "die", "nimbus_gate.py"):
            (cache / name).unlink(missing_ok=True)


def gated_run(ex: WarmSandboxExecutor, cache: Path, code: str = "print('ran')") -> Run:
    return Run(ex, code, tenant_id=41, extra_env={"NIMBUS_CACHE_DIR": str(cache)})


def test_an_attempt_waits_for_the_warm_sandbox_starting_for_its_tenant(
    gated: tuple[WarmSandboxExecutor, Path],
) -> None:
    """Not cold: that sandbox's imports are under way, a cold start's would begin. That
    one is the attempt's now: the pool starts another for the tenant's next attempt."""
    ex, cache = gated
    run = gated_run(ex, cache)
    deadline = time.monotonic() + 30
    while len(cpu_weights(ex)) < 2:
        assert time.monotonic() < deadline, "no replacement started"
        time.sleep(0.01)
    assert ex.poll(run.handle) is None and run.output == ""
    (cache / "go").touch()
    assert run.wait().ok and run.output == "ran\n", run.output
    assert (ex.warm_starts, ex.waited_starts, ex.cold_starts) == (1, 1, 0)
    assert ex.wait_warm(41, cache, timeout=30)  # the replacement


def test_an_attempt_killed_while_it_waits_ends_and_leaves_the_sandbox_to_the_next(
    gated: tuple[WarmSandboxExecutor, Path],
) -> None:
    ex, cache = gated
    run = gated_run(ex, cache)
    ex.kill(run.handle)
    status = run.wait()
    assert status == ExitStatus(None, signal.SIGKILL) and run.output == ""
    (cache / "go").touch()
    assert ex.wait_warm(41, cache, timeout=30)
    second = gated_run(ex, cache)
    assert second.wait().ok and second.output == "ran\n", second.output
    assert (ex.warm_starts, ex.waited_starts, ex.cold_starts) == (1, 0, 0)


def test_an_attempt_whose_awaited_warm_sandbox_failed_starts_cold(
    gated: tuple[WarmSandboxExecutor, Path],
) -> None:
    ex, cache = gated
    run = gated_run(ex, cache)
    (cache / "die").touch()
    (cache / "go").touch()
    assert run.wait(timeout=30).ok and run.output == "ran\n", run.output
    assert (ex.warm_starts, ex.cold_starts) == (0, 1)


def test_memory_past_the_limit_is_out_of_memory_when_warm(warm: WarmSandboxExecutor) -> None:
    run = warm_run(
        warm,
        "x = bytearray(512 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nprint('survived')",
        resources=Resources(memory_bytes=128 * MiB),
    )
    status = run.wait(timeout=60)
    assert status.limit is ExitReason.OUT_OF_MEMORY and "survived" not in run.output


def test_a_fork_bomb_stops_at_the_process_limit_when_warm(warm: WarmSandboxExecutor) -> None:
    run = warm_run(
        warm,
        "import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        n += 1\n"
        "except OSError:\n    pass\nprint(n)",
    )
    assert run.wait(timeout=60).ok, run.output
    assert int(run.output.split()[-1]) < 32


def test_workers_of_a_warm_attempt_reach_each_other(warm: WarmSandboxExecutor) -> None:
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
    run = warm_run(warm, code, workers=2)
    assert run.wait(timeout=30).ok, run.output
    assert "[0] got hello" in run.output


def test_a_warm_sandbox_over_the_memory_limit_is_not_used(warm: WarmSandboxExecutor) -> None:
    warm.expect(None)
    assert warm.wait_warm(None, timeout=60)
    cold = warm.cold_starts
    run = Run(warm, "print('ran')", resources=Resources(memory_bytes=MiB))
    run.wait(timeout=60)
    assert warm.cold_starts == cold + 1


def test_a_tenant_cache_made_afresh_is_not_shown_by_an_older_warm_sandbox(
    warm: WarmSandboxExecutor, caches: TenantCaches
) -> None:
    cache = caches.dir_for(7)
    warm.expect(7, cache)
    assert warm.wait_warm(7, cache, timeout=60)
    os.chown(cache, 12345, 0)  # left by a job's uid: dir_for starts it afresh
    assert caches.dir_for(7) == cache
    cold = warm.cold_starts
    run = Run(warm, "print('ran')", tenant_id=7, extra_env={"NIMBUS_CACHE_DIR": str(cache)})
    assert run.wait().ok and warm.cold_starts == cold + 1


def test_an_attempt_whose_warm_sandboxes_died_starts_in_none_of_them(
    warm: WarmSandboxExecutor,
) -> None:
    """It starts cold, or in a warm sandbox the pool starts once it finds the others dead
    (then it waits for that one); never in a dead one, and it runs."""
    dead = {w.name for w in settled_ready(warm, 8)}
    zygotes = [pid for pid in all_warm_pids(warm) if ns_pid(pid) == 2 and tenant_of(pid) == 8]
    assert dead and len(zygotes) == len(dead)
    for zygote in zygotes:
        os.kill(zygote, signal.SIGKILL)
    cold, waited = warm.cold_starts, warm.waited_starts
    run = Run(warm, "print('ran')", tenant_id=8)
    status = run.wait()
    assert status.ok and run.output == "ran\n", run.output
    assert (warm.cold_starts - cold, warm.waited_starts - waited) in {(1, 0), (0, 1)}
    assert run.handle.sandbox.cgroup.dirs[0].name not in dead  # type: ignore[attr-defined]


def test_a_warm_sandbox_found_dead_is_logged_with_what_its_zygote_said(
    warm: WarmSandboxExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    """A zygote sent bytes that are no request dies with a traceback on its stderr (not a
    signal: SIGINT is ignored where the tests run in the background): the log line that
    drops its sandbox carries it."""
    ready = settled_ready(warm, 9)
    for sandbox in ready:
        sandbox.link.sock.send(b"no json")
    deadline = time.monotonic() + 30
    while any(w.alive() for w in ready):
        assert time.monotonic() < deadline, "a zygote outlived a request it could not read"
        time.sleep(0.02)
    with caplog.at_level("WARNING", logger="nimbus.jobs.executors.warm"):
        run = Run(warm, "print('ran')", tenant_id=9)
        assert run.wait().ok and run.output == "ran\n"
    dropped = [r.getMessage() for r in caplog.records if "found gone" in r.getMessage()]
    assert len(dropped) == len(ready), caplog.text
    assert all("JSONDecodeError" in line for line in dropped), dropped


def settled_ready(ex: WarmSandboxExecutor, tenant: int, timeout: float = 60) -> list[WarmSandbox]:
    """Every warm sandbox ready for ``tenant`` once ``ex``'s pool starts none (so none
    comes up after the caller kills these)."""
    ex.expect(tenant)
    assert ex.wait_warm(tenant, timeout=timeout)
    deadline = time.monotonic() + timeout
    while ex._starting:
        assert time.monotonic() < deadline, f"still starting: {list(ex._starting)}"
        time.sleep(0.02)
    return [w for w in ex._ready if w.key.tenant_id == tenant]


def all_warm_pids(ex: WarmSandboxExecutor) -> set[int]:
    """Host pids of the warm sandboxes' processes (their cgroups name them)."""
    found: set[int] = set()
    for hierarchy in ex.warm_sandbox.hierarchies:
        for group in hierarchy.base.glob("warm-*"):
            found |= {int(p) for p in (group / "cgroup.procs").read_text().split()}
    return found


def ns_pid(pid: int) -> int:
    """``pid``'s number in its own PID namespace."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {pid}")


def tenant_of(pid: int) -> int:
    """The tenant a warm sandbox's process was started for (its gid, after the uids)."""
    gid = os.stat(f"/proc/{pid}").st_gid
    return gid - 2_000_000_000 - 1000  # tests/jobs/test_isolation.isolation's uid range


@pytest.mark.parametrize(
    "nonsense",
    [b"not json", b"[1]", b'{"exit": 3, "code": "0"}', b'{"id": "1", "pid": 1}', b""],
)
def test_a_zygote_talking_nonsense_is_taken_as_gone(nonsense: bytes) -> None:
    """Once claimed, a zygote is its attempt's and its job could speak for it: what does
    not parse ends the link, and the attempt's workers count as killed."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link = ZygoteLink(ours)
    theirs.send(b'{"ready": true}')
    link.wait_ready(5)
    theirs.send(b'{"exit": 7, "code": 3}')
    theirs.send(nonsense) if nonsense else theirs.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + 5
    while link.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not link.alive
    assert link.exit_of(7) == ExitStatus(3)  # what it said before still counts
    assert link.exit_of(8) == ExitStatus(None, signal.SIGKILL)
    link.close()
    theirs.close()


class Offered:
    """A ``should_kill`` that kills nothing and notes what it was offered."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __call__(self, name: str) -> bool:
        self.names.add(name)
        return False


def test_a_previous_runs_warm_sandboxes_are_orphans_and_its_own_are_not(
    sandbox: Sandbox, base: Path
) -> None:
    """After a crash, the next start kills the warm sandboxes the last one left (their
    cgroups name no attempt); an executor never offers its own ones as orphans."""
    jobs = base / "home" / "restarted"
    first = WarmSandboxExecutor(jobs, sandbox=sandbox, size=1, preload=["json"])
    second = None
    try:
        first.expect(9)
        assert first.wait_warm(9, timeout=60)
        offered_by_first, offered_by_second = Offered(), Offered()
        first.reap_orphans(offered_by_first)
        second = WarmSandboxExecutor(jobs, sandbox=sandbox, size=0, preload=["json"])
        second.reap_orphans(offered_by_second)
        (left,) = offered_by_second.names - offered_by_first.names
        pids = cgroups.AttemptCgroup(sandbox.hierarchies, left).pids()
        assert len(pids) == 3  # launcher, bwrap's init, the zygote
        assert second.reap_orphans(lambda name: name == left) == [left]
        assert all(wait_gone(pid) for pid in pids)
    finally:
        first.close()
        if second is not None:
            second.close()


def test_an_unsandboxed_fork_server_is_unchanged(base: Path) -> None:
    ex = make_executor("forkserver", base / "plain" / "jobs", preload=["json"])
    try:
        assert not isinstance(ex, WarmSandboxExecutor)
        run = Run(ex, "import os; print(os.getuid())")
        assert run.wait().ok and int(run.output) == os.geteuid()
    finally:
        ex.close()


# -- one attempt after another (attempts of one affinity) ---------------------------------

LEAVE_BEHIND = """
import ctypes, json, os, sys, time
open("left", "w").write("x")
open("/dev/shm/left", "w").write("x")
open("/tmp/left", "w").write("x")
segment = ctypes.CDLL(None).shmget(0, 4096, 0o1000 | 0o600)  # IPC_PRIVATE, IPC_CREAT
if os.fork() == 0:
    os.setsid()
    time.sleep(600)
    os._exit(0)
time.sleep(0.5)  # the escapee has left the job's session by then
print(json.dumps({"zygote": os.getppid(), "uid": os.getuid(), "segment": segment}), flush=True)
time.sleep(0.5)
sys.exit(3)
"""

LOOK_AROUND = (
    "import ctypes, json, os, signal\n"
    + ATTEMPT
    + """
zygote = os.getppid()
libc = ctypes.CDLL(None, use_errno=True)
traced = libc.ptrace(16, zygote, None, None)  # PTRACE_ATTACH
print(json.dumps({
    "zygote": zygote,
    "uid": os.getuid(),
    "here": sorted(os.listdir(".")),
    "shm": os.listdir("/dev/shm"),
    "tmp": os.listdir("/tmp"),
    "tmp writable": attempt(lambda: open("/tmp/mine", "w").write("x")),
    "segments": open("/proc/sysvipc/shm").read().splitlines()[1:],
    "others": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "mem": attempt(lambda: open(f"/proc/{zygote}/mem", "rb").read(1)),
    "fds": attempt(lambda: os.listdir(f"/proc/{zygote}/fd")),
    "environ": attempt(lambda: open(f"/proc/{zygote}/environ", "rb").read()),
    "ptrace": "allowed" if traced == 0 else os.strerror(ctypes.get_errno()),
}))
"""
)


def reused(ex: WarmSandboxExecutor, code: str, affinity: str | None, **kwargs: object) -> Run:
    """An attempt that must start in the sandbox an earlier attempt of ``affinity`` ran in."""
    before = ex.reused_starts
    run = Run(ex, code, affinity=affinity, **kwargs)  # type: ignore[arg-type]
    assert ex.reused_starts == before + 1, "not in a used sandbox"
    return run


def test_the_next_attempt_of_an_affinity_runs_in_its_sandbox_and_finds_nothing_of_the_last(
    warm: WarmSandboxExecutor,
) -> None:
    first = warm_run(warm, LEAVE_BEHIND, affinity="study-1")
    first.wait_output("zygote")
    sandbox = first.handle.sandbox.cgroup  # type: ignore[attr-defined]
    escapee = max(sandbox.child("job").pids())  # the job and its escapee are born there
    assert first.wait().exit_code == 3
    left = json.loads(first.output)
    assert wait_gone(escapee)  # killed with its attempt, the zygote not
    # The attempt's files are in its work directory (failed: kept), the server's.
    assert (first.workdir / "left").read_text() == "x"
    assert (first.workdir / TMP_NAME / "left").read_text() == "x"
    assert first.workdir.stat().st_uid == os.geteuid()

    second = reused(warm, LOOK_AROUND, "study-1")
    assert second.wait().ok, second.output
    seen = json.loads(second.output)
    assert (seen["zygote"], seen["uid"]) == (left["zygote"], left["uid"])  # the same sandbox
    assert seen["here"] == [TMP_NAME] and seen["shm"] == [] and seen["segments"] == []
    assert "left" not in seen["tmp"] and seen["tmp writable"] == "allowed"
    assert set(seen["tmp"]) <= set(first.launch.workdir.parts[2:3]) | {"mine"}  # bwrap's
    assert len(seen["others"]) == 3  # bwrap's init, the zygote, itself: no escapee
    # It cannot reach into the zygote that served the attempt before it.
    assert seen["mem"] == seen["fds"] == seen["environ"] == "PermissionError", seen
    assert seen["ptrace"] != "allowed", seen


def test_attempts_of_other_affinities_or_none_never_share_a_sandbox(
    warm: WarmSandboxExecutor,
) -> None:
    zygote = "import os; print(os.getppid(), os.getuid())"
    first = warm_run(warm, zygote, affinity="a")
    assert first.wait().ok
    before = warm.reused_starts
    other = warm_run(warm, zygote, affinity="b")
    unset = warm_run(warm, zygote)
    assert other.wait().ok and unset.wait().ok
    assert warm.reused_starts == before
    assert other.output.split()[1] != first.output.split()[1]  # another uid
    again = reused(warm, zygote, "a")  # a's still waits for it
    assert again.wait().ok and again.output == first.output
    after_unset = warm_run(warm, zygote)  # an attempt without affinity hands nothing on
    assert after_unset.wait().ok and after_unset.output != unset.output


def test_a_killed_attempt_hands_its_sandbox_on_and_one_past_a_limit_does_not(
    warm: WarmSandboxExecutor,
) -> None:
    hang = "import os, time; print(os.getppid(), flush=True); time.sleep(600)"
    run = warm_run(warm, hang, affinity="k")
    run.wait_output("\n")
    warm.kill(run.handle)  # SIGTERM ends it (the default handler)
    assert run.wait().signal == signal.SIGTERM
    greedy = "x = bytearray(512 * 2**20)\nx[::4096] = b'1' * len(x[::4096])"
    oom = reused(warm, greedy, "k", resources=Resources(memory_bytes=128 * MiB))
    assert oom.wait(timeout=60).limit is ExitReason.OUT_OF_MEMORY
    before = warm.reused_starts
    after = Run(warm, "print('fresh')", affinity="k")
    assert after.wait().ok and warm.reused_starts == before


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_an_attempt_that_kills_or_stops_its_zygote_leaves_the_next_to_another_sandbox(
    warm: WarmSandboxExecutor, how: int
) -> None:
    attack = f"import os; os.kill(os.getppid(), {int(how)}); print('done', flush=True)"
    run = warm_run(warm, attack, affinity=f"attack-{how}")
    run.wait(timeout=30)
    before = warm.reused_starts
    after = Run(warm, "print('fine')", affinity=f"attack-{how}")
    assert after.wait(timeout=30).ok and after.output == "fine\n"
    assert warm.reused_starts == before


def test_without_reuse_every_attempt_of_an_affinity_has_a_sandbox_of_its_own(
    sandbox: Sandbox, base: Path
) -> None:
    ex = make_executor(
        "forkserver", base / "home" / "strict", preload=["json"], sandbox=sandbox, reuse=False
    )
    assert isinstance(ex, WarmSandboxExecutor)
    try:
        uid = "import os; print(os.getuid())"
        first = warm_run(ex, uid, affinity="s")
        assert first.wait().ok
        second = Run(ex, uid, affinity="s")
        assert second.wait(timeout=60).ok and ex.reused_starts == 0
        assert second.output != first.output
    finally:
        ex.close()


def test_a_warm_attempt_with_gpus_sees_only_its_own_and_holds_them(
    warm: WarmSandboxExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPUs a warm attempt is granted are taken as a cold start takes them: each sees
    only its own (CUDA_VISIBLE_DEVICES), two never share one, and they are free again once
    it ends. (This machine has no GPU: the slots stand for two.)"""
    monkeypatch.setattr(warm, "gpus", GpuSlots(["0", "1"]))
    key = WarmKey(None, None, gpus=True)
    warm._note(key)
    deadline = time.monotonic() + 60
    while not any(w.key == key for w in list(warm._ready)):
        assert time.monotonic() < deadline, "no warm sandbox with GPUs started"
        time.sleep(0.05)
    show = (
        "import os, time\nprint(os.environ['CUDA_VISIBLE_DEVICES'], "
        "os.environ['CUDA_DEVICE_ORDER'], flush=True)\ntime.sleep(60)"
    )
    one_gpu = Resources(cpus=1, gpus=1, memory_bytes=0)
    before = warm.warm_starts
    first = Run(warm, show, resources=one_gpu)
    assert warm.warm_starts == before + 1
    second = Run(warm, show, resources=one_gpu)
    assert first.wait_output("\n") == "0 PCI_BUS_ID\n"
    assert second.wait_output("\n") == "1 PCI_BUS_ID\n"
    with pytest.raises(GpusUnavailable):  # none left: refused, whichever way it would start
        Run(warm, show, resources=one_gpu)
    assert warm.gpus.held() == {first.launch.attempt_id: ("0",), second.launch.attempt_id: ("1",)}
    for run in (first, second):
        warm.kill(run.handle)
        run.wait()
    assert warm.gpus.held() == {}


STOPPING = """
import os, signal, sys, time
def stop(*_):
    time.sleep(0.3)
    if ON_STOP == "kill the zygote":
        os.kill(os.getppid(), signal.SIGKILL)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(os.getuid(), flush=True)
time.sleep(600)
"""
UID = "import os; print(os.getuid())"


def drain(ex: WarmSandboxExecutor, key: WarmKey = WarmKey(None, None)) -> None:
    """Take every warm sandbox of ``key`` ready now (its replacements take a while)."""
    while (warm := ex._take(key)) is not None:
        warm.discard(ex.warm_sandbox)


@pytest.mark.parametrize("on_stop", ["ends", "kill the zygote"])
def test_the_next_attempt_of_an_affinity_waits_for_the_sandbox_of_one_told_to_stop(
    warm: WarmSandboxExecutor, on_stop: str
) -> None:
    """A study cancels a pruned trial and queues the next at once: the next, finding no
    warm sandbox ready, waits for the pruned one's (nothing of it runs meanwhile) and starts
    there once it ended; if that one cannot serve again (the ending job killed its zygote),
    elsewhere."""
    affinity = f"pruned-{on_stop}"
    first = warm_run(warm, f"ON_STOP = {on_stop!r}" + STOPPING, affinity=affinity)
    first.wait_output("\n")
    warm.kill(first.handle)  # as the study's round cancels a pruned trial's job
    before = warm.reused_starts
    drain(warm)  # none ready: a ready one would be taken first
    second = Run(warm, UID, affinity=affinity)
    assert warm.poll(second.handle) is None and second.output == ""  # waits
    first.wait()
    assert second.wait(timeout=30).ok, second.output
    if on_stop == "ends":
        assert second.output == first.output and warm.reused_starts == before + 1
    else:
        assert second.output != first.output and warm.reused_starts == before


def test_an_attempt_killed_while_it_waits_for_an_ending_sandbox_leaves_it_to_the_next(
    warm: WarmSandboxExecutor,
) -> None:
    first = warm_run(warm, "ON_STOP = 'ends'" + STOPPING, affinity="left")
    first.wait_output("\n")
    warm.kill(first.handle)
    drain(warm)
    waiting = Run(warm, UID, affinity="left")
    warm.kill(waiting.handle)
    assert waiting.wait().signal == signal.SIGKILL and waiting.output == ""
    first.wait()
    after = reused(warm, UID, "left")  # the sandbox waits for the next of its affinity
    assert after.wait().ok and after.output == first.output
