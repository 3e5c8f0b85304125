"""User code kept away from the server's secrets, for real: a root server (as here and in
CI) runs every job as the unprivileged ``nimbus-job``, and a user script that goes looking
for NIMBUS_HOME's secrets, or another job's files, is refused by the kernel."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.db import job_outputs
from nimbus.db.engine import Database
from nimbus.jobs.isolation import JobUser, ensure_system_user, preflight
from tests.api.conftest import API, csv_bytes, make_token
from tests.helpers import ServerProcess

FAST = {
    "NIMBUS_SCHEDULER_TICK_SECONDS": "0.1",
    "NIMBUS_RETRY_BASE_SECONDS": "0.2",
    "NIMBUS_KILL_GRACE_SECONDS": "2",
}

MARKER = b"""\
import os
open("marker.txt", "w").write("private to this job")
print("workdir", os.environ["NIMBUS_JOB_DIR"], flush=True)
"""

PROBE = b"""\
import json, os
from nimbus import runtime as nr
home, other = nr.params["home"], nr.params["other"]
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return type(exc).__name__
print("probe " + json.dumps({
    "admin-token": attempt(lambda: open(f"{home}/admin-token").read()),
    "nimbus.db": attempt(lambda: open(f"{home}/nimbus.db", "rb").read(16)),
    "nimbus.db-wal": attempt(lambda: open(f"{home}/nimbus.db-wal", "rb").read(16)),
    "instance-id": attempt(lambda: open(f"{home}/instance-id").read()),
    "blobs": attempt(lambda: os.listdir(f"{home}/blobs")),
    "deployments": attempt(lambda: os.listdir(f"{home}/deployments")),
    "home": attempt(lambda: os.listdir(home)),
    "jobs": attempt(lambda: os.listdir(f"{home}/jobs")),
    "cache": attempt(lambda: os.listdir(f"{home}/cache")),
    "other job": attempt(lambda: os.listdir(os.path.dirname(other))),
    "other attempt": attempt(lambda: open(f"{other}/marker.txt").read()),
    "server environ": attempt(lambda: open(f"/proc/{nr.params['server']}/environ").read()),
}), flush=True)
print("env " + json.dumps(sorted(k for k in os.environ if k in (
    "NIMBUS_TOKEN", "NIMBUS_DATABASE_URL", "NIMBUS_STORAGE_URL", "NIMBUS_HOME"))), flush=True)
print("ids " + json.dumps([os.getresuid(), os.getgroups()]), flush=True)
"""


class Tenant:
    """A member of one tenant on the server, with the dataset uploaded."""

    def __init__(self, server: ServerProcess, tenant: str | None = None) -> None:
        self.client = server.client(make_token(server, "member", tenant))
        self.server = server
        upload = self.client.post(
            f"{API}/datasets/reviews/versions",
            params={"filename": "r.csv"},
            content=csv_bytes(tenant or ""),
        )
        assert upload.status_code in (200, 201), upload.text

    def run(self, model: str | bytes, **body: Any) -> dict[str, Any]:
        if isinstance(model, bytes):
            code = self.client.post(f"{API}/code", params={"filename": "job.py"}, content=model)
            assert code.status_code == 201, code.text
            model = str(code.json()["ref"])
        response = self.client.post(
            f"{API}/jobs", json={"dataset": "reviews", "model": model, **body}
        )
        assert response.status_code == 201, response.text
        return wait(self.client, response.json()["id"], self.server)

    def logs(self, job_id: str) -> str:
        page = self.client.get(f"{API}/jobs/{job_id}/logs").json()
        return "".join(chunk["data"] for chunk in page["chunks"])


def wait(
    client: httpx.Client, job_id: str, server: ServerProcess, timeout: float = 120
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


@pytest.fixture(scope="module")
def user() -> JobUser:
    if os.geteuid() != 0:
        pytest.skip("running jobs as another user needs a server started as root")
    return ensure_system_user()


@pytest.fixture(scope="module")
def server(user: JobUser) -> Iterator[ServerProcess]:
    """A root server whose NIMBUS_HOME the job user can reach (pytest's tmp dirs are 0700),
    with server-side secrets in its environment."""
    base = Path(tempfile.mkdtemp(prefix="nimbus-isolation-"))
    base.chmod(0o711)
    if problems := preflight(user, [base]):
        shutil.rmtree(base)
        pytest.skip(f"the job user cannot run jobs on this machine: {'; '.join(problems)}")
    home = base / "home"
    env = {
        **FAST,
        "NIMBUS_TOKEN": "nbt_server-side-secret",  # what a job must not see
        "NIMBUS_DATABASE_URL": f"sqlite:///{home}/nimbus.db",
        "NIMBUS_STORAGE_URL": f"file://{home}/blobs",
    }
    try:
        with ServerProcess(home, env=env) as running:
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_home_is_laid_out_for_jobs_running_as_another_user(
    server: ServerProcess, user: JobUser
) -> None:
    assert f"jobs run as {user.name}" in server.log()
    home = server.home
    expected = {
        home: 0o711,
        home / "jobs": 0o711,
        home / "cache": 0o711,
        home / "admin-token": 0o600,
        home / "nimbus.db": 0o600,
        home / "instance-id": 0o600,
        home / "cache-key": 0o600,
        home / "blobs": 0o700,
        home / "tmp": 0o700,
        home / "deployments": 0o700,
    }
    assert {path: mode(path) for path in expected} == expected
    for sidecar in ("nimbus.db-wal", "nimbus.db-shm"):  # SQLite copies the database's mode
        assert not (home / sidecar).exists() or mode(home / sidecar) == 0o600
    assert all(path.stat().st_uid == 0 for path in expected)


def test_a_script_cannot_reach_the_servers_secrets_or_another_jobs_files(
    server: ServerProcess, user: JobUser
) -> None:
    default = Tenant(server)
    marked = default.run(MARKER)
    assert marked["state"] == "succeeded", default.logs(marked["id"])
    other = line(default.logs(marked["id"]), "workdir ")
    assert Path(other, "marker.txt").read_text() == "private to this job"

    acme = Tenant(server, "acme")
    assert server.proc is not None
    probe = acme.run(
        PROBE, params={"home": str(server.home), "other": other, "server": str(server.proc.pid)}
    )
    logs = acme.logs(probe["id"])
    assert probe["state"] == "succeeded", logs
    refused = json.loads(line(logs, "probe "))
    assert refused == {name: "PermissionError" for name in refused}, logs
    assert json.loads(line(logs, "env ")) == []
    uids, groups = json.loads(line(logs, "ids "))
    assert uids == [user.uid] * 3 and groups == []
    # Each tenant's download cache (the scripts are blobs too), the job user's, 0700.
    caches = [path for path in (server.home / "cache").iterdir() if path.is_dir()]
    assert len(caches) == 2
    assert all(mode(path) == 0o700 and path.stat().st_uid == user.uid for path in caches)


def test_a_builtin_model_still_trains_end_to_end(server: ServerProcess, user: JobUser) -> None:
    tenant = Tenant(server, "builtin")
    job = tenant.run("text", params={"epochs": "2"}, seed=3)
    assert job["state"] == "succeeded", tenant.logs(job["id"])
    assert 0 <= job["evaluation"]["accuracy"] <= 1
    assert {a["name"] for a in job["artifacts"]} == {
        "spec.json",
        "weights.safetensors",
        "model.onnx",
    }
    db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
    try:
        with db.session() as s:
            checkpoint = job_outputs.latest_checkpoint(s, job["id"])
    finally:
        db.dispose()
    assert checkpoint is not None  # written in the work directory, uploaded
    # The dataset's prepared arrays came through the tenant's cache, written by the job.
    cached = [
        path
        for path in (server.home / "cache").rglob("*")
        if path.is_file() and not path.name.endswith(".lock")
    ]
    assert len(cached) >= 6 and all(path.stat().st_uid == user.uid for path in cached)
    assert all(mode(path) == 0o600 for path in cached)  # the job's umask
    # The ended attempt's directory is the server's again.
    workdirs = list((server.home / "jobs" / job["id"]).iterdir())
    assert workdirs and all(path.stat().st_uid == 0 and mode(path) == 0o700 for path in workdirs)
