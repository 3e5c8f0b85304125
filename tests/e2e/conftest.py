"""End-to-end fault tests: real server processes, real job processes, real SIGKILLs.

One server per module where the tests can share it; the tests that kill the server start
their own. Settings make the scheduler quick (short ticks, short retry backoff, a short kill
grace) so the whole directory stays within a few minutes on two cores.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nimbus.client import Client
from nimbus.config import Settings
from nimbus.db import job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.demo_data import write_digits_zip
from nimbus.jobs.domain import Attempt
from nimbus.wire.jobs import MetricPoint
from tests.helpers import ServerProcess

T = TypeVar("T")

FAST = {
    "NIMBUS_SCHEDULER_TICK_SECONDS": "0.1",
    "NIMBUS_RETRY_BASE_SECONDS": "0.2",
    "NIMBUS_KILL_GRACE_SECONDS": "2",
    "NIMBUS_LEASE_SECONDS": "15",
    "NIMBUS_CAPACITY_CPUS": "2",
}
# Built-in CNN runs long enough to be killed mid-training: ~0.7-1 s per epoch on the digits.
SLOW_CNN = {"epochs": "4", "batch_size": "4"}
QUICK_CNN = {"epochs": "2", "batch_size": "64"}


def start_server(home: Path, port: int | None = None, **env: str) -> ServerProcess:
    return ServerProcess(home, env={**FAST, **env}, port=port).start()


def client_for(server: ServerProcess) -> Client:
    return Client(server.url, server.admin_token, settings=Settings(home=server.home))


@pytest.fixture(scope="module")
def e2e_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("e2e") / "home")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(e2e_server: ServerProcess) -> Iterator[Client]:
    with client_for(e2e_server) as client:
        yield client


def upload_digits(api: Client, folder: Path) -> str:
    """The full digits (1,797 images) as dataset ``digits``; returns ``digits:V``."""
    data = write_digits_zip(folder / "digits.zip")
    version = api.upload_dataset("digits", data.path)
    return f"{version.dataset}:{version.version}"


@pytest.fixture(scope="module")
def digits(api: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_digits(api, tmp_path_factory.mktemp("digits"))


def script(folder: Path, name: str, code: str) -> Path:
    """A user training script ``folder/name.py``."""
    path = folder / f"{name}.py"
    path.write_text(code)
    return path


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def job_processes(home: Path, job_id: str) -> list[int]:
    """Pids of the processes working for ``job_id``: their cwd is the attempt's directory
    (``NIMBUS_HOME/jobs/<job id>/<attempt id>``), whichever executor forked them."""
    root = str((home / "jobs" / job_id).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (cwd == root or cwd.startswith(root + "/")):
            found.append(int(entry.name))
    return found


def kill_job_processes(home: Path, job_id: str) -> list[int]:
    """SIGKILL the process groups of a job's processes: a crash, as the OOM killer does."""
    pids = job_processes(home, job_id)
    for pgid in {os.getpgid(pid) for pid in pids if _exists(pid)}:
        os.killpg(pgid, signal.SIGKILL)
    return pids


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Store:
    """Read-only looks into a server's metadata store (what the API does not show)."""

    def __init__(self, home: Path) -> None:
        self.db = Database(f"sqlite:///{home / 'nimbus.db'}")

    def attempts(self, job_id: str) -> list[Attempt]:
        with self.db.session() as session:
            return repo.list_attempts(session, job_id)

    def checkpoint_step(self, job_id: str) -> int | None:
        with self.db.session() as session:
            found = job_outputs.latest_checkpoint(session, job_id)
        return found.step if found else None

    def result(self, job_id: str) -> dict[str, Any] | None:
        with self.db.session() as session:
            job = repo.get(session, job_id)
        return job.result if job else None

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def store(e2e_server: ServerProcess) -> Iterator[Store]:
    opened = Store(e2e_server.home)
    yield opened
    opened.close()


def steps_by_attempt(metrics: dict[str, list[MetricPoint]], name: str) -> dict[int, list[int]]:
    """``{attempt: [steps]}`` of one metric series."""
    out: dict[int, list[int]] = {}
    for point in metrics.get(name, []):
        out.setdefault(point.attempt, []).append(point.step)
    return out


def logs_text(api: Client, job_id: str) -> str:
    return "".join(chunk.data for chunk in api.iter_logs(job_id))
