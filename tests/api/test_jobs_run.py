"""Jobs that really run: a server with its scheduler, the executor and the Nimbus runtime
(``python -m nimbus.runtime.entry``), end to end over HTTP."""

from __future__ import annotations

import ast
import csv
import io
import os
import random
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from tests.api.conftest import API, csv_bytes, make_token
from tests.helpers import ServerProcess
from tests.helpers import follow as follow_events

FAST = {
    "NIMBUS_SCHEDULER_TICK_SECONDS": "0.1",
    "NIMBUS_RETRY_BASE_SECONDS": "0.2",
    "NIMBUS_KILL_GRACE_SECONDS": "2",
}
SCRIPT = b"""\
import os, sys, time
from nimbus import runtime as nr
print("attempt", os.environ["NIMBUS_ATTEMPT_NUMBER"], "pid", os.getpid(), flush=True)
for i in range(3):
    print("line", i, flush=True)
if nr.params.get("sleep_on_first") and os.environ["NIMBUS_ATTEMPT_NUMBER"] == "1":
    time.sleep(600)
time.sleep(float(nr.params.get("sleep", 0)))
sys.exit(int(nr.params.get("exit", 0)))
"""


class Jobs:
    """A member's view of one server, with the script uploaded."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client = server.client(make_token(server, "member"))
        upload = self.client.post(
            f"{API}/datasets/reviews/versions",
            params={"filename": "r.csv"},
            content=csv_bytes("run"),
        )
        assert upload.status_code in (200, 201), upload.text
        code = self.client.post(f"{API}/code", params={"filename": "job.py"}, content=SCRIPT)
        assert code.status_code == 201, code.text
        self.script = code.json()["ref"]

    def submit(self, **body: Any) -> str:
        response = self.client.post(
            f"{API}/jobs", json={"dataset": "reviews", "model": self.script, **body}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def get(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"{API}/jobs/{job_id}").json())

    def wait(self, job_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := self.get(job_id))["state"] not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job}\n{self.server.log()[-3000:]}")
            time.sleep(0.1)
        return job

    def wait_log(self, job_id: str, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in (logs := self.logs(job_id)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} never logged: {logs}\n{self.server.log()[-3000:]}")
            time.sleep(0.1)
        return logs

    def logs(self, job_id: str) -> str:
        page = self.client.get(f"{API}/jobs/{job_id}/logs").json()
        return "".join(chunk["data"] for chunk in page["chunks"])


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobs]:
    """A server with the default executor (the fork server, torch preloaded)."""
    with ServerProcess(tmp_path_factory.mktemp("run") / "home", env=FAST) as server:
        yield Jobs(server)


def test_a_script_runs_its_logs_stream_and_it_ends(jobs: Jobs) -> None:
    ok = jobs.submit(params={"sleep": "0.5"})
    events = follow_events(jobs.client, ok)
    assert events[-1] == ("end", {"state": "succeeded", "exit_reason": "succeeded"})
    text = "".join(data["data"] for kind, data in events if kind == "log")
    assert "line 0\nline 1\nline 2\n" in text and "attempt 1" in text
    job = jobs.get(ok)
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"]

    failing = jobs.wait(jobs.submit(params={"exit": 3}, max_retries=2))
    assert failing["state"] == "failed" and failing["attempts"] == 1
    assert "not retried" in failing["exit_reason"]


def test_cancel_stops_a_running_job(jobs: Jobs) -> None:
    job_id = jobs.submit(params={"sleep": 600})
    logs = jobs.wait_log(job_id, "line 2")
    pid = int(logs.split("pid ")[1].split()[0])
    assert jobs.client.post(f"{API}/jobs/{job_id}/cancel").status_code == 200
    assert jobs.wait(job_id, timeout=30)["state"] == "cancelled"
    assert _gone(pid)


def test_a_builtin_model_trains_uploads_and_is_scored(jobs: Jobs) -> None:
    response = jobs.client.post(
        f"{API}/jobs",
        json={"dataset": "reviews", "model": "text", "params": {"epochs": "1"}, "seed": 3},
    )
    assert response.status_code == 201, response.text
    job = jobs.wait(response.json()["id"])
    assert job["state"] == "succeeded", jobs.logs(job["id"])
    assert 0 <= job["evaluation"]["accuracy"] <= 1
    assert {a["name"] for a in job["artifacts"]} == {
        "spec.json",
        "weights.safetensors",
        "model.onnx",
    }
    metrics = jobs.client.get(f"{API}/jobs/{job['id']}/metrics").json()["metrics"]
    assert metrics["train_loss"][0]["step"] == 1
    assert "torch" not in _server_libraries(jobs.server)  # the RSS budget: never in the server


def _stdlib_docstrings(per_class: int = 100) -> bytes:
    """Real English text nobody here wrote: the first paragraph of the docstrings of
    functions and classes in six standard-library packages, labelled by package, as a
    balanced text CSV (the sources are parsed, never imported)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: dict[str, list[str]] = {}
    for package in ("asyncio", "email", "unittest", "xml", "multiprocessing", "http"):
        texts = set()
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    text = " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())
                    if len(text.split()) >= 4:
                        texts.add(text)
        found[package] = sorted(texts)
    count = min(per_class, *map(len, found.values()))
    rng = random.Random(0)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    writer.writerows((t, p) for p, texts in found.items() for t in rng.sample(texts, count))
    return out.getvalue().encode()


def test_the_default_text_model_learns_real_text(jobs: Jobs) -> None:
    upload = jobs.client.post(
        f"{API}/datasets/docstrings/versions",
        params={"filename": "docstrings.csv"},
        content=_stdlib_docstrings(),
    )
    assert upload.status_code in (200, 201), upload.text
    response = jobs.client.post(f"{API}/jobs", json={"dataset": "docstrings", "model": "text"})
    assert response.status_code == 201, response.text
    job = jobs.wait(response.json()["id"], timeout=300)
    assert job["state"] == "succeeded", jobs.logs(job["id"])
    assert job["evaluation"]["accuracy"] >= 0.5  # six balanced classes: chance is 1/6
    metrics = jobs.client.get(f"{API}/jobs/{job['id']}/metrics").json()["metrics"]
    (best,) = metrics["best_epoch"]
    assert 1 <= best["value"] <= best["step"] == len(metrics["val_accuracy"])
    assert f"best_epoch {best['value']:g}" in jobs.logs(job["id"])


@pytest.mark.slow
def test_a_killed_server_restarts_and_every_job_ends_once(tmp_path: Path) -> None:
    """SIGKILL the server (local executor: the job's process outlives it) while attempt 1
    runs; the restarted server kills that orphan and reruns the job: it ends exactly once."""
    home = tmp_path / "home"
    env = {**FAST, "NIMBUS_EXECUTOR": "local"}
    server = ServerProcess(home, env=env).start()
    try:
        jobs = Jobs(server)
        job_id = jobs.submit(params={"sleep_on_first": 1}, max_retries=1)
        orphan = int(jobs.wait_log(job_id, "line 2").split("pid ")[1].split()[0])
        server.kill()
        assert not _gone(orphan, timeout=0.2)  # its own session: the crash did not take it
        server = ServerProcess(home, env=env).start()
        jobs = Jobs(server)
        job = jobs.wait(job_id)
        assert job["state"] == "succeeded" and job["attempts"] == 2
        assert _gone(orphan)
        db = Database(f"sqlite:///{home / 'nimbus.db'}")
        try:
            with db.session() as s:
                attempts = repo.list_attempts(s, job_id)
        finally:
            db.dispose()
        assert [a.state.value for a in attempts] == ["lost", "succeeded"]
        assert "attempt 2" in jobs.logs(job_id)
    finally:
        server.stop()


def _gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def _server_libraries(server: ServerProcess) -> str:
    assert server.proc is not None
    return Path(f"/proc/{server.proc.pid}/maps").read_text() + os.linesep
