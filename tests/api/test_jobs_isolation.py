"""User code kept in its sandbox, for real: a root server (as here and in CI) runs every
attempt in bubblewrap with a uid and a cgroup of its own, and hostile scripts submitted as
ordinary members try what the security probe of issue 8 did: read the server's secrets,
read another tenant's running job (its /proc environment, its token), write another
tenant's cache, signal another job, leave a process behind, exhaust memory, processes or
disk. Each test fails on the code before the sandbox (jobs then ran as root, or all as
one uid, with no limit enforced)."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import API, csv_bytes, make_token
from tests.helpers import ServerProcess, passable_dir
from tests.jobs.test_isolation import ATTEMPT

FAST = {
    "NIMBUS_SCHEDULER_TICK_SECONDS": "0.1",
    "NIMBUS_RETRY_BASE_SECONDS": "0.2",
    "NIMBUS_KILL_GRACE_SECONDS": "2",
    "NIMBUS_EXECUTOR": "local",  # every job process an exec'ed one: the /proc attack's case
    "NIMBUS_JOB_ISOLATION": "sandbox",
    "NIMBUS_JOB_PIDS_LIMIT": "64",
    "NIMBUS_JOB_DISK_LIMIT": "64M",
    "NIMBUS_JOB_KEEP_FAILED_SECONDS": "3600",
}

VICTIM = b"""\
import os, time
print("victim", os.environ["NIMBUS_CACHE_DIR"], flush=True)
open(os.path.join(os.environ["NIMBUS_CACHE_DIR"], "victim-data"), "w").write("clean")
time.sleep(float(os.environ.get("VICTIM_SECONDS", "600")))  # cancelled by the test
"""

THIEF = (
    """\
import json, os, signal
from nimbus import runtime as nr
home, victim_cache = nr.params["home"], nr.params["victim_cache"]
"""
    + ATTEMPT
    + """
visible = [int(p) for p in os.listdir("/proc") if p.isdigit()]
stolen = []
for pid in visible:
    try:
        env = open(f"/proc/{pid}/environ", "rb").read()
    except OSError:
        continue
    if b"NIMBUS_JOB_TOKEN" in env and os.environ["NIMBUS_JOB_TOKEN"].encode() not in env:
        stolen.append(pid)
def signal_victim():
    for pid in nr.params["victim_pids"].split(","):
        os.kill(int(pid), signal.SIGKILL)
print("probe " + json.dumps({
    "admin-token": attempt(lambda: open(f"{home}/admin-token").read()),
    "nimbus.db": attempt(lambda: open(f"{home}/nimbus.db", "rb").read(16)),
    "blobs": attempt(lambda: os.listdir(f"{home}/blobs")),
    "victim cache": attempt(lambda: open(f"{victim_cache}/victim-data", "w").write("poison")),
    "victim cache new file": attempt(lambda: open(f"{victim_cache}/planted", "w")),
    "signal another job": attempt(signal_victim),
}), flush=True)
print("home " + json.dumps(sorted(os.listdir(home))), flush=True)
# Its own PID namespace: the sandbox's init (1), itself, what it started (none).
print("visible " + json.dumps(sorted(set(visible) - {1, os.getpid()})), flush=True)
print("stolen " + json.dumps(stolen), flush=True)
"""
).encode()


class Tenant:
    """A member of one tenant on the server, with a dataset uploaded."""

    def __init__(self, server: ServerProcess, tenant: str | None = None) -> None:
        self.client = server.client(make_token(server, "member", tenant))
        self.server = server
        upload = self.client.post(
            f"{API}/datasets/reviews/versions",
            params={"filename": "r.csv"},
            content=csv_bytes(tenant or ""),
        )
        assert upload.status_code in (200, 201), upload.text

    def submit(self, script: bytes, **body: Any) -> str:
        code = self.client.post(f"{API}/code", params={"filename": "job.py"}, content=script)
        assert code.status_code == 201, code.text
        response = self.client.post(
            f"{API}/jobs", json={"dataset": "reviews", "model": code.json()["ref"], **body}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def run(self, script: bytes, **body: Any) -> dict[str, Any]:
        return wait(self.client, self.submit(script, **body), self.server)

    def logs(self, job_id: str) -> str:
        page = self.client.get(f"{API}/jobs/{job_id}/logs").json()
        return "".join(chunk["data"] for chunk in page["chunks"])

    def wait_log(self, job_id: str, prefix: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs(job_id)
            if prefix in logs:
                return line(logs, prefix)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{prefix!r} never logged:\n{logs}\n{self.server.log()[-3000:]}")
            time.sleep(0.2)


def wait(
    client: httpx.Client, job_id: str, server: ServerProcess, timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (job := client.get(f"{API}/jobs/{job_id}").json())["state"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job}\n{server.log()[-3000:]}")
        time.sleep(0.1)
    return dict(job)


def line(logs: str, prefix: str) -> str:
    return next(text for text in logs.splitlines() if text.startswith(prefix))[len(prefix) :]


def job_processes(job_id: str) -> list[int]:
    """Host pids of the processes running job ``job_id``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"NIMBUS_JOB_ID={job_id}".encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def processes_with(marker: str) -> list[int]:
    """Host processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with passable_dir() as path:
        yield path


@pytest.fixture(scope="module")
def server(base: Path) -> Iterator[ServerProcess]:
    """A root server that sandboxes jobs, with server-side secrets in its environment."""
    home = base / "home"
    env = {**FAST, "NIMBUS_TOKEN": "nbt_server-side-secret"}
    with ServerProcess(home, env=env) as running:
        health = running.client().get("/healthz").json()
        if not health["job_isolation"]["runs_jobs"]:
            pytest.fail(f"the sandbox cannot engage here: {health}")
        yield running


def test_the_server_says_how_it_isolates_jobs(server: ServerProcess) -> None:
    health = server.client().get("/healthz").json()["job_isolation"]
    assert health["mode"] == "sandbox" and health["runs_jobs"] is True
    assert "sandboxed" in health["detail"]
    assert "jobs run sandboxed" in server.log()


def test_a_job_cannot_reach_secrets_other_jobs_their_tokens_or_their_cache(
    server: ServerProcess,
) -> None:
    victim = Tenant(server, "victim")
    victim_job = victim.submit(VICTIM)
    victim_cache = victim.wait_log(victim_job, "victim ")
    victim_pids = job_processes(victim_job)
    assert victim_pids
    thief = Tenant(server, "thief")
    try:
        params = {
            "home": str(server.home),
            "victim_cache": victim_cache,
            "victim_pids": ",".join(map(str, victim_pids)),
        }
        job = thief.run(THIEF, params=params)
        logs = thief.logs(job["id"])
        assert job["state"] == "succeeded", logs
        refused = json.loads(line(logs, "probe "))
        assert json.loads(line(logs, "stolen ")) == [], logs
        assert json.loads(line(logs, "visible ")) == [], logs
        # Only the skeleton its work directory and its cache are mounted on.
        assert set(json.loads(line(logs, "home "))) <= {"jobs", "cache", "envs"}, logs
        victim_state = victim.client.get(f"{API}/jobs/{victim_job}").json()["state"]
    finally:
        victim.client.post(f"{API}/jobs/{victim_job}/cancel")
    assert victim_state == "running"  # the thief's SIGKILLs did not reach it
    assert "allowed" not in refused.values(), logs
    assert Path(victim_cache, "victim-data").read_text() == "clean"
    shown = thief.client.get(f"{API}/jobs/{job['id']}").json()
    assert shown["isolation"] == "sandbox"


ESCAPE = """\
import os, subprocess, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.closerange(0, 3)
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", "{marker}"])
    os._exit(0)
time.sleep(1)
print("escaped", flush=True)
time.sleep(float("{stay}"))
"""


@pytest.mark.parametrize("end", ["ends", "cancelled"])
def test_a_double_forked_setsid_process_dies_with_its_job(server: ServerProcess, end: str) -> None:
    tenant = Tenant(server, f"escape-{end}")
    marker = f"nimbus-escapee-{uuid.uuid4().hex}"
    stay = "0" if end == "ends" else "600"
    job_id = tenant.submit(ESCAPE.format(marker=marker, stay=stay).encode())
    tenant.wait_log(job_id, "escaped")
    assert processes_with(marker), "the escapee should be running while its job runs"
    if end == "cancelled":
        assert tenant.client.post(f"{API}/jobs/{job_id}/cancel").status_code == 200
    job = wait(tenant.client, job_id, server)
    assert job["state"] == ("succeeded" if end == "ends" else "cancelled"), tenant.logs(job_id)
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []


def test_memory_past_the_limit_ends_out_of_memory_without_retries(server: ServerProcess) -> None:
    tenant = Tenant(server, "hungry")
    job = tenant.run(
        b"x = bytearray(1536 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nprint('survived')\n",
        memory="768M",
        max_retries=2,
    )
    logs = tenant.logs(job["id"])
    assert job["state"] == "failed" and job["exit_reason"].startswith("out of memory"), (job, logs)
    assert job["attempts"] == 1 and "survived" not in logs


FORK_BOMB = b"""\
import os, time
children = 0
try:
    while children < 500:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
except OSError as exc:
    print("stopped", children, exc.errno, flush=True)
print("forked", children, flush=True)
"""


def test_a_fork_bomb_is_stopped_by_the_process_limit(server: ServerProcess) -> None:
    tenant = Tenant(server, "bomber")
    job = tenant.run(FORK_BOMB)
    logs = tenant.logs(job["id"])
    forked = int(line(logs, "forked ").split()[0])
    assert "stopped" in logs and forked < 64, logs  # NIMBUS_JOB_PIDS_LIMIT, threads included
    assert server.client().get("/healthz").status_code == 200


DISK_HOG = b"""\
import os
with open("hog", "wb") as out:
    for _ in range(256):
        out.write(b"x" * 2**20)
print("wrote 256 MiB", flush=True)
"""

SPARSE = b"""\
with open("sparse", "wb") as out:
    out.seek(50 * 2**30)
    out.write(b"x")
print("wrote a 50 GiB sparse file", flush=True)
"""


def test_writing_past_the_disk_limit_ends_the_job(server: ServerProcess) -> None:
    tenant = Tenant(server, "hog")
    job = tenant.run(DISK_HOG, max_retries=2)
    logs = tenant.logs(job["id"])
    assert job["state"] == "failed" and job["exit_reason"].startswith("disk limit"), (job, logs)
    assert job["attempts"] == 1 and "wrote" not in logs
    # Failed: its work directory is kept (NIMBUS_JOB_KEEP_FAILED_SECONDS), at the limit.
    (workdir,) = (server.home / "jobs" / job["id"]).iterdir()
    assert (workdir / "hog").stat().st_size <= 64 * 2**20


def test_a_sparse_file_past_the_disk_limit_ends_at_the_disk_limit(server: ServerProcess) -> None:
    """Python ignores SIGXFSZ, so the write past RLIMIT_FSIZE used to fail (EFBIG) and
    the job's own error ended it; the sandbox's seccomp filter keeps the signal fatal."""
    tenant = Tenant(server, "sparse")
    job = tenant.run(SPARSE, max_retries=2)
    logs = tenant.logs(job["id"])
    assert job["state"] == "failed" and job["exit_reason"].startswith("disk limit"), (job, logs)
    assert job["attempts"] == 1 and "wrote" not in logs


def test_a_builtin_model_still_trains_end_to_end(server: ServerProcess) -> None:
    tenant = Tenant(server, "builtin")

    def train() -> dict[str, Any]:
        body = {"dataset": "reviews", "model": "text", "params": {"epochs": "2"}, "seed": 3}
        return wait(
            tenant.client, tenant.client.post(f"{API}/jobs", json=body).json()["id"], server
        )

    job = train()
    assert job["state"] == "succeeded", tenant.logs(job["id"])
    # A second attempt of the tenant, another uid, reuses what the first one cached.
    again = train()
    assert again["state"] == "succeeded", tenant.logs(again["id"])
    assert {a["name"] for a in job["artifacts"]} == {
        "spec.json",
        "weights.safetensors",
        "model.onnx",
    }
    # The dataset's prepared arrays came through the tenant's cache: the server's, its
    # tenant's group, files the attempt wrote with the group's access only.
    caches = [p for p in (server.home / "cache").iterdir() if p.is_dir()]
    assert caches and all(
        p.stat().st_uid == 0 and p.stat().st_mode & 0o7777 == 0o2770 for p in caches
    )
    # A succeeded attempt's work directory is removed.
    assert list((server.home / "jobs" / job["id"]).iterdir()) == []


LAYERED = b"""\
import os, numpy, tomli
print("tomli " + tomli.__file__, flush=True)
print("numpy " + numpy.__file__, flush=True)
try:  # another tenant's job may run with the same environment
    open(os.path.join(os.path.dirname(tomli.__file__), "planted.py"), "w")
    print("environment writable", flush=True)
except OSError as exc:
    print("environment read-only", type(exc).__name__, flush=True)
"""


KILLED_ONCE = (
    LAYERED
    + b"""
if os.environ["NIMBUS_ATTEMPT_NUMBER"] == "1":
    os.kill(os.getpid(), 9)
"""
)


def test_an_environment_is_built_once_as_a_job_uid_and_reused(server: ServerProcess) -> None:
    """Issue 15: ``--requirements`` is resolved once per job into a lock (kept with the
    job) and built into a uv environment layered on the platform's packages, keyed by the
    lock; two jobs asking for it at once share one build, run by a job uid (never root);
    a later job reuses it without a resolve or a rebuild, and so does a later job whose
    other list resolves to the same pins; its retry installs the job's lock, unresolved."""
    tenant = Tenant(server, "layered")
    body = {"environment": {"requirements": ["Tomli == 2.0.1", "# a comment", ""]}}
    first, second = tenant.submit(LAYERED, **body), tenant.submit(LAYERED, **body)
    # The key hashes the lock and the platform's packages: read, not assumed.
    key = tenant.wait_log(first, "nimbus: environment ").split()[0]
    tenant.wait_log(first, f"nimbus: environment {key} built")
    # Once built: reused as it is (started while the first two may still run).
    third = tenant.submit(LAYERED, environment={"requirements": ["tomli==2.0.1"]})
    ranged = tenant.submit(
        KILLED_ONCE, environment={"requirements": ["tomli>=2.0.1,<2.0.2"]}, max_retries=1
    )
    ids = (first, second, third, ranged)
    jobs = [wait(tenant.client, job_id, server) for job_id in ids]
    logs = [tenant.logs(job_id) for job_id in ids]
    assert [job["state"] for job in jobs] == ["succeeded"] * 4, logs
    normalised = {"requirements": ["tomli==2.0.1"], "lock": ["tomli==2.0.1"]}
    assert jobs[0]["environment"] == normalised
    assert "building as uid" in logs[0] and "resolving" in logs[0]  # the first one builds
    # The second, asked for at the same time, shares the first's work: it waits for the
    # build under way, or finds it built when its attempt started after the build (a loaded
    # machine); never a resolve or a build of its own (tests/jobs/test_environments.py
    # holds a build open to see the wait every time).
    shared = ("is being built for another job: waiting", "found: reused, not rebuilt")
    assert any(said in logs[1] for said in shared) and "resolving" not in logs[1], logs[1]
    assert "building as uid" not in logs[1]
    assert "found: reused, not rebuilt" in logs[2] and "resolving" not in logs[2]
    uid = int(line(logs[0], "nimbus: environment: building as uid "))
    assert 2_000_000_000 <= uid < 2_000_000_000 + 65_536  # a job uid, not root
    envs = server.home / "envs"
    for text in logs:  # the environment's package, over the platform's numpy
        assert line(text, "tomli ").startswith(f"{envs}/"), text
        assert not line(text, "numpy ").startswith(f"{envs}/"), text
        assert "environment read-only" in text, text
    built = [p for p in envs.iterdir() if not p.name.startswith(".")]
    assert len(built) == 1 and built[0].stat().st_uid == 0
    assert built[0].stat().st_mode & 0o777 == 0o755  # read-only to jobs
    # Another list, the same pins: resolved, then the same environment; its retry
    # installs the recorded lock without a resolve.
    assert jobs[3]["attempts"] == 2 and jobs[3]["environment"]["lock"] == ["tomli==2.0.1"]
    attempts = attempt_logs(tenant, ranged)
    assert "nimbus: environment: resolving" in attempts[1], attempts
    assert "locked to tomli==2.0.1" in attempts[1], attempts
    assert "the job's recorded lock: tomli==2.0.1" in attempts[2], attempts
    assert "resolving" not in attempts[2], attempts
    for text in attempts.values():
        assert f"nimbus: environment {key} found: reused, not rebuilt" in text, attempts


def attempt_logs(tenant: Tenant, job_id: str) -> dict[int, str]:
    page = tenant.client.get(f"{API}/jobs/{job_id}/logs").json()
    texts: dict[int, str] = {}
    for chunk in page["chunks"]:
        texts[chunk["attempt"]] = texts.get(chunk["attempt"], "") + chunk["data"]
    return texts


def test_an_environment_that_cannot_resolve_fails_the_job_without_retries(
    server: ServerProcess,
) -> None:
    tenant = Tenant(server, "unresolvable")
    job = tenant.run(LAYERED, environment={"requirements": ["nonexistent-pkg-xyz==1"]})
    assert job["state"] == "failed", job
    assert job["exit_reason"].startswith("environment_build_failed: the resolve failed"), job
    assert "nonexistent-pkg-xyz" in job["exit_reason"] and job["attempts"] == 1
    assert "nonexistent-pkg-xyz was not found" in tenant.logs(job["id"])  # uv's output


def test_a_server_that_cannot_sandbox_runs_no_job_and_says_why(base: Path) -> None:
    """The root fallback of issue 8: a job user that cannot reach NIMBUS_HOME (behind a
    0700 directory) used to mean jobs ran as root and read the admin token."""
    walled = base / "walled"
    walled.mkdir(mode=0o700)
    env = {**FAST}
    with ServerProcess(walled / "home", env=env) as server:
        health = server.client().get("/healthz").json()["job_isolation"]
        assert health["runs_jobs"] is False and str(walled) in health["detail"], health
        assert "NIMBUS_JOB_ISOLATION=none" in health["detail"]
        tenant = Tenant(server, "refused")
        job_id = tenant.submit(b"print(open(%r).read())\n" % str(server.home / "admin-token"))
        time.sleep(3)
        job = tenant.client.get(f"{API}/jobs/{job_id}").json()
        assert job["state"] == "queued" and tenant.logs(job_id) == ""
        assert "jobs refused" in server.log()


def test_running_unisolated_is_said_loudly(base: Path) -> None:
    env = {**FAST, "NIMBUS_JOB_ISOLATION": "none"}
    with ServerProcess(base / "unisolated", env=env) as server:
        health = server.client().get("/healthz").json()["job_isolation"]
        assert (
            health
            == {
                "mode": "none",
                "runs_jobs": True,
                "detail": health["detail"],
                "network": "host",
            }
            and "UNISOLATED" in health["detail"]
        )
        assert "UNISOLATED" in server.log()
        tenant = Tenant(server, "alone")
        job = tenant.run(b"print('hi')\n")
        assert job["state"] == "succeeded"
        assert tenant.client.get(f"{API}/jobs/{job['id']}").json()["isolation"] == "none"


# -- the same attacks through warm sandboxes (jobs/executors/warm.py) -----------------------

WARM = {**FAST, "NIMBUS_EXECUTOR": "forkserver", "NIMBUS_JOB_WARM_SANDBOXES": "2"}
SAY_CWD = b"import os\nprint('cwd ' + os.getcwd(), flush=True)\n"


@pytest.fixture(scope="module")
def warm_server(base: Path) -> Iterator[ServerProcess]:
    """A root server whose attempts start in warm sandboxes (the default executor), the
    default modules preloaded (torch, the runtime)."""
    env = {**WARM, "NIMBUS_TOKEN": "nbt_server-side-secret"}
    with ServerProcess(base / "warm", env=env) as running:
        if not running.client().get("/healthz").json()["job_isolation"]["runs_jobs"]:
            pytest.fail("the sandbox cannot engage here")
        yield running


def warm_job(tenant: Tenant, script: bytes, **body: Any) -> tuple[str, str]:
    """Submit ``script`` until it starts in a warm sandbox (a tenant's is started once the
    tenant ran a job, in the background); returns that job's id and its working directory
    as it sees it."""
    for _ in range(20):
        ready = warm_ready(tenant.server)
        job_id = tenant.submit(SAY_CWD + script, **body)
        cwd = tenant.wait_log(job_id, "cwd ")
        if "/.warm/" in cwd:
            return job_id, cwd
        tenant.client.post(f"{API}/jobs/{job_id}/cancel")
        wait(tenant.client, job_id, tenant.server)
        # The tenant's warm sandbox starts at the lowest CPU weight: wait for it rather
        # than start cold jobs that take the CPU it waits for.
        deadline = time.monotonic() + 90
        while warm_ready(tenant.server) == ready and time.monotonic() < deadline:
            time.sleep(0.2)
    raise AssertionError("no job of the tenant started warm")


def warm_ready(server: ServerProcess) -> int:
    """How many warm sandboxes the server has said ready so far."""
    return len(re.findall(r"warm sandbox \S+ ready for tenant", server.log()))


def workdir_processes(where: str) -> list[int]:
    """Host pids whose working directory is ``where`` as the sandbox sees it (a warm job's
    environment is its zygote's: it does not say which job it runs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == where:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_a_warm_job_cannot_reach_secrets_other_jobs_their_tokens_or_their_cache(
    warm_server: ServerProcess,
) -> None:
    victim, thief = Tenant(warm_server, "victim"), Tenant(warm_server, "thief")
    victim_job, victim_cwd = warm_job(victim, VICTIM)
    victim_cache = victim.wait_log(victim_job, "victim ")
    victim_pids = workdir_processes(victim_cwd)
    assert victim_pids
    try:
        params = {
            "home": str(warm_server.home),
            "victim_cache": victim_cache,
            "victim_pids": ",".join(map(str, victim_pids)),
        }
        job_id, _ = warm_job(thief, THIEF, params=params)
        job = wait(thief.client, job_id, warm_server)
        logs = thief.logs(job_id)
        assert job["state"] == "succeeded", logs
        refused = json.loads(line(logs, "probe "))
        assert json.loads(line(logs, "stolen ")) == [], logs
        assert json.loads(line(logs, "visible ")) == [2], logs  # its own zygote only
        assert set(json.loads(line(logs, "home "))) <= {"jobs", "cache", "envs"}, logs
        victim_state = victim.client.get(f"{API}/jobs/{victim_job}").json()["state"]
    finally:
        victim.client.post(f"{API}/jobs/{victim_job}/cancel")
    assert victim_state == "running"
    assert "allowed" not in refused.values(), logs
    assert Path(victim_cache, "victim-data").read_text() == "clean"


@pytest.mark.slow
@pytest.mark.parametrize("end", ["ends", "cancelled"])
def test_a_double_forked_setsid_process_dies_with_its_warm_job(
    warm_server: ServerProcess, end: str
) -> None:
    tenant = Tenant(warm_server, f"warm-escape-{end}")
    marker = f"nimbus-escapee-{uuid.uuid4().hex}"
    stay = "3" if end == "ends" else "600"  # ends by itself, once the escapee was seen
    job_id, _ = warm_job(tenant, ESCAPE.format(marker=marker, stay=stay).encode())
    tenant.wait_log(job_id, "escaped")
    assert processes_with(marker)
    if end == "cancelled":
        assert tenant.client.post(f"{API}/jobs/{job_id}/cancel").status_code == 200
    job = wait(tenant.client, job_id, warm_server)
    assert job["state"] == ("succeeded" if end == "ends" else "cancelled"), tenant.logs(job_id)
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []


@pytest.mark.slow
def test_memory_past_the_limit_ends_a_warm_job_out_of_memory(warm_server: ServerProcess) -> None:
    tenant = Tenant(warm_server, "warm-hungry")
    hog = b"x = bytearray(1536 * 2**20)\nx[::4096] = b'1' * len(x[::4096])\nprint('survived')\n"
    job_id, _ = warm_job(tenant, hog, memory="768M", max_retries=2)
    job = wait(tenant.client, job_id, warm_server)
    logs = tenant.logs(job_id)
    assert job["state"] == "failed" and job["exit_reason"].startswith("out of memory"), (job, logs)
    assert job["attempts"] == 1 and "survived" not in logs
