"""Job and code routes through a real server with its scheduler off: the test plays the
scheduler (claims attempts in the metadata store) and the job process (calls the job API
routes with the attempt's token)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nimbus.db import job_outputs
from nimbus.db import jobs as repo
from nimbus.db.engine import Database
from nimbus.jobs.capacity import Capacity
from nimbus.jobs.domain import Claim, JobState
from nimbus.jobs.policy import Outcome, RetryPolicy
from nimbus.jobs.tokens import mint_token
from tests.api.conftest import API, blob_files, csv_bytes, error_of, make_token
from tests.helpers import ServerProcess, follow

API_ONLY = {
    "NIMBUS_SCHEDULER_ENABLED": "false",
    "NIMBUS_CAPACITY_CPUS": "4",
    "NIMBUS_CAPACITY_GPUS": "0",
    "NIMBUS_CAPACITY_MEMORY": "8G",
}
NODE = Capacity(cpus=64, gpus=8, memory_bytes=1 << 40)
NOW_PLUS = timedelta(seconds=5)


def npz_images(rows: int = 40) -> bytes:
    """A tiny image-classification dataset: uint8 [N, 8, 8, 1] and two labels."""
    buffer = io.BytesIO()
    x = np.arange(rows * 64, dtype=np.uint8).reshape(rows, 8, 8, 1)
    np.savez(buffer, x=x, y=np.array([i % 2 for i in range(rows)]))
    return buffer.getvalue()


def tar_bytes(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


@dataclass
class Env:
    server: ServerProcess
    member: httpx.Client
    db: Database


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    server = ServerProcess(tmp_path_factory.mktemp("jobs") / "home", env=API_ONLY).start()
    member = server.client(make_token(server, "member"))
    for name, data, filename in (
        ("reviews", csv_bytes("jobs"), "r.csv"),
        ("digits", npz_images(), "d.npz"),
    ):
        response = member.post(
            f"{API}/datasets/{name}/versions", params={"filename": filename}, content=data
        )
        assert response.status_code == 201, response.text
    db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
    try:
        yield Env(server, member, db)
    finally:
        member.close()
        db.dispose()
        server.stop()


def submit(env: Env, **body: Any) -> dict[str, Any]:
    response = env.member.post(f"{API}/jobs", json={"dataset": "reviews", "model": "text", **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def claim(env: Env, job_id: str) -> Claim:
    """Start the job's next attempt as a scheduler would (the job must be first in line)."""
    with env.db.session(write=True) as s:
        claims = repo.claim_next(
            s,
            capacity=NODE,
            owner="test-node",
            now=datetime.now(UTC) + NOW_PLUS,
            lease_seconds=60,
            limit=1,
        )
    assert [c.job.id for c in claims] == [job_id]
    return claims[0]


def requeue(env: Env, claimed: Claim) -> None:
    """The attempt's process died (an infrastructure failure): the job goes back in line."""
    with env.db.session(write=True) as s:
        repo.finish_attempt(
            s,
            claimed.attempt.id,
            Outcome.infra("test"),
            datetime.now(UTC),
            RetryPolicy(base_seconds=0),
        )


def finish(env: Env, claimed: Claim, code: int = 0) -> None:
    with env.db.session(write=True) as s:
        repo.finish_attempt(s, claimed.attempt.id, Outcome.from_exit(code), datetime.now(UTC))


def job_api(env: Env, claimed: Claim, token: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=f"{env.server.url}{API}/job-api/{claimed.attempt.id}",
        headers={"Authorization": f"Bearer {token or claimed.token}"},
        timeout=30,
    )


@pytest.fixture
def running(env: Env) -> Iterator[tuple[dict[str, Any], Claim, httpx.Client]]:
    """A running attempt of a fresh job (first in line: highest priority)."""
    job = submit(env, priority=1000, params={"epochs": "1"})
    claimed = claim(env, job["id"])
    with job_api(env, claimed) as client:
        yield job, claimed, client
    end_job(env, job["id"])


def end_job(env: Env, job_id: str) -> None:
    """Whatever a test left running or queued ends cancelled (the next test's claims see
    only their own job)."""
    with env.db.session(write=True) as s:
        job = repo.get(s, job_id)
        if job is None or job.state.terminal:
            return
        repo.request_cancel(s, job_id, datetime.now(UTC))
        current = job.current_attempt_id if job.state is JobState.RUNNING else None
    if current is not None:
        with env.db.session(write=True) as s:
            repo.finish_attempt(s, current, Outcome.from_exit(None, 15), datetime.now(UTC))


# --- submit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        ({"params": {"nope": 1}}, 400, "'nope'"),
        ({"params": {"epochs": "many"}}, 400, "'epochs'"),
        ({"params": {"lr": -1}}, 400, "'lr'"),
        ({"dataset": "digits", "model": "text"}, 400, "text"),
        ({"model": "cnn"}, 400, "cnn"),
        ({"model": "gpt"}, 400, "unknown model"),
        ({"dataset": "nothing"}, 404, "nothing"),
        ({"dataset": "reviews:9"}, 404, "version 9"),
        ({"dataset": "reviews:zero"}, 400, "version"),
        ({"dataset": "Bad Name"}, 400, "dataset name"),
        ({"cpus": 64}, 400, "cpus"),
        ({"cpus": 2, "workers": 3}, 400, "cpus"),
        ({"gpus": 1}, 400, "gpus"),
        ({"memory": "64G"}, 400, "memory"),
        ({"memory": "lots"}, 400, "memory"),
        ({"deadline": "soon"}, 400, "duration"),
        ({"priority": 5000}, 400, "priority"),
        ({"seed": -1}, 400, "seed"),
        ({"seed": 1, "params": {"seed": "2"}}, 400, "seed"),
        ({"colour": "blue"}, 400, "'colour'"),
        ({"model": "automl", "params": {"budget": 5, "register": "Bad Name"}}, 400, "'register'"),
        ({"model": "automl", "params": {"budget": 5, "register": ["x"]}}, 400, "'register'"),
        ({"model": "code:sha256/00/" + "0" * 64}, 404, "code artifact"),
        ({"model": "code:elsewhere"}, 400, "code reference"),
        *(
            ({"environment": {"requirements": ["tomli==2.0.1", line]}}, 400, named)
            for line, named in [
                ("--index-url https://evil.example/simple", "options"),
                ("-e .", "options"),
                ("-r other.txt", "options"),
                ("pkg @ https://evil.example/pkg.whl", "URLs"),
                ("https://evil.example/pkg-1.0.tar.gz", "URLs"),
                ("./local/pkg", "paths"),
                ("/etc/passwd", "paths"),
                ("pkg-1.0-py3-none-any.whl", "archives"),
                ("git+ssh://git@example.com/pkg", "URLs"),
                ("tomli==2.0.2", "required twice"),
                ("not a requirement!", "not a requirement"),
            ]
        ),
        ({"environment": {"requirements": "tomli"}}, 400, "requirements"),
        ({"environment": {"packages": ["tomli"]}}, 400, "packages"),
    ],
)
def test_submit_is_validated(env: Env, body: dict[str, Any], status: int, named: str) -> None:
    response = env.member.post(f"{API}/jobs", json={"dataset": "reviews", "model": "text", **body})
    assert response.status_code == status, response.text
    assert named in error_of(response)["message"]


def test_submit_show_list_compare_cancel(env: Env) -> None:
    job = submit(
        env, params={"epochs": "2", "batch-size": "8"}, memory="2G", deadline="1h", priority=-5
    )
    assert job["state"] == "queued" and job["model"] == "text" and job["attempts"] == 0
    assert job["dataset"]["name"] == "reviews" and job["dataset"]["version"] == 1
    assert job["params"]["epochs"] == 2 and job["params"]["batch_size"] == 8
    assert job["params"]["seed"] == 0 and job["seed"] == 0
    assert job["resources"] == {
        "cpus": 1.0,
        "gpus": 0,
        "memory": 2 << 30,
        "workers": 1,
        "custom": {},
        "spread": False,
    }
    assert job["deadline_at"] and job["evaluation"] is None and job["artifacts"] == []
    seeded = submit(env, params={"seed": "7"}, priority=-5)
    assert seeded["seed"] == 7 and seeded["params"]["seed"] == 7

    assert env.member.get(f"{API}/jobs/{job['id']}").json() == job
    listed = env.member.get(f"{API}/jobs", params={"state": "queued", "limit": 1000}).json()
    assert [j["id"] for j in listed["jobs"]][:2] == [seeded["id"], job["id"]]
    compared = env.member.get(f"{API}/jobs/compare", params={"ids": f"{job['id']},{seeded['id']}"})
    assert [j["id"] for j in compared.json()["jobs"]] == [job["id"], seeded["id"]]

    cancelled = env.member.post(f"{API}/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert env.member.get(f"{API}/jobs/{job['id']}").json()["finished_at"]
    env.member.post(f"{API}/jobs/{seeded['id']}/cancel")
    for bad in ({"state": "sleeping"}, {"limit": 0}):
        assert env.member.get(f"{API}/jobs", params=bad).status_code == 400
    assert env.member.get(f"{API}/jobs/compare", params={"ids": "job_nope"}).status_code == 404


def test_tenants_and_roles(env: Env) -> None:
    job = submit(env, priority=-5)
    other = env.server.client(make_token(env.server, "member", "other-tenant"))
    viewer = env.server.client(make_token(env.server, "viewer"))
    with other, viewer:
        refused = other.post(f"{API}/jobs", json={"dataset": "reviews", "model": "text"})
        assert refused.status_code == 404 and "reviews" in error_of(refused)["message"]
        for method, path in (
            ("GET", f"/jobs/{job['id']}"),
            ("POST", f"/jobs/{job['id']}/cancel"),
            ("GET", f"/jobs/{job['id']}/logs"),
            ("GET", f"/jobs/{job['id']}/metrics"),
        ):
            assert other.request(method, API + path).status_code == 404, path
        assert other.get(f"{API}/jobs").json() == {"jobs": []}
        assert viewer.get(f"{API}/jobs/{job['id']}").status_code == 200
        for method, path in (
            ("POST", "/jobs"),
            ("POST", f"/jobs/{job['id']}/cancel"),
            ("POST", "/code?filename=a.py"),
        ):
            response = viewer.request(
                method, API + path, json={"dataset": "reviews", "model": "text"}
            )
            assert response.status_code == 403, path
        automl = {"dataset": "reviews", "model": "automl", "params": {"register": "m", "budget": 5}}
        assert viewer.post(f"{API}/jobs", json=automl).status_code == 403  # registers nothing
    env.member.post(f"{API}/jobs/{job['id']}/cancel")


# --- code -----------------------------------------------------------------------------------


def notebook_bytes(cells: Any = (), kernel: str = "python") -> bytes:
    """An nbformat 4 notebook's JSON, as valid as its ``cells``."""
    kernelspec = {"name": kernel.lower(), "language": kernel, "display_name": kernel}
    body = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"kernelspec": kernelspec}}
    return json.dumps({**body, "cells": cells if isinstance(cells, str) else list(cells)}).encode()


def test_code_upload_is_checked_and_tenant_scoped(env: Env) -> None:
    script = b"print('hello')\n"
    first = env.member.post(f"{API}/code", params={"filename": "train.py"}, content=script)
    assert first.status_code == 201, first.text
    digest = hashlib.sha256(script).hexdigest()
    assert first.json()["ref"] == f"code:sha256/{digest[:2]}/{digest}"
    assert (first.json()["entry"], first.json()["format"]) == ("main.py", "py")
    again = env.member.post(f"{API}/code", params={"filename": "other.py"}, content=script)
    assert again.json() == first.json()
    archive = tar_bytes({"main.py": b"import helper\n", "helper.py": b"X = 1\n"})
    packed = env.member.post(f"{API}/code", params={"filename": "proj.tar"}, content=archive)
    assert packed.status_code == 201 and packed.json()["format"] == "tar", packed.text
    book = notebook_bytes(kernel="python")
    notebook = env.member.post(f"{API}/code", params={"filename": "train.ipynb"}, content=book)
    assert notebook.status_code == 201, notebook.text
    assert (notebook.json()["entry"], notebook.json()["format"]) == ("main.ipynb", "ipynb")
    body = {"dataset": "reviews", "model": notebook.json()["ref"], "workers": 2}
    refused = env.member.post(f"{API}/jobs", json=body)
    assert refused.status_code == 400 and "a notebook runs in one worker" in refused.text

    cases = [
        ("bad.py", b"def broken(:\n", "line 1"),
        ("bad.py", b"\xff\xfe", "UTF-8"),
        ("notes.txt", b"hello", ".py"),
        ("proj.tar", tar_bytes({"src/main.py": b"pass\n"}), "no main.py"),
        ("proj.tar", tar_bytes({"main.py": b"pass\n"}, {"evil": "/etc/passwd"}), "link"),
        ("proj.tar", tar_bytes({"main.py": b"pass\n", "../escape.py": b"x"}), "'..'"),
        ("proj.tar", tar_bytes({"main.py": b"print(\n"}), "main.py line"),
        ("proj.tar", b"not a tar at all", "not a tar"),
        ("nb.ipynb", b"{not json", "nb.ipynb is not a notebook"),
        ("nb.ipynb", b"\xff\xfe", "nb.ipynb is not UTF-8"),
        ("nb.ipynb", json.dumps({"nbformat": 3, "worksheets": []}).encode(), "nbformat 3"),
        ("nb.ipynb", notebook_bytes(cells="x"), "is not a valid notebook"),
        (
            "nb.ipynb",
            notebook_bytes(cells=[{"cell_type": "code", "source": "", "metadata": {}}]),
            "required",
        ),
        ("nb.ipynb", notebook_bytes(kernel="R"), "is a R notebook: jobs run Python notebooks"),
    ]
    before = blob_files(env.server.home)
    for filename, data, named in cases:
        response = env.member.post(f"{API}/code", params={"filename": filename}, content=data)
        assert response.status_code == 400, (filename, response.text)
        assert named in error_of(response)["message"], (filename, response.text)
    assert blob_files(env.server.home) == before

    job = submit(
        env, model=first.json()["ref"], params={"lr": "0.1", "layers": [1, 2]}, priority=-5
    )
    assert job["model"] == first.json()["ref"] and job["params"] == {"lr": "0.1", "layers": [1, 2]}
    env.member.post(f"{API}/jobs/{job['id']}/cancel")
    with env.server.client(make_token(env.server, "member", "code-thief")) as thief:
        stolen = thief.post(f"{API}/jobs", json={"dataset": "reviews", "model": job["model"]})
        assert stolen.status_code == 404


# --- job_api routes --------------------------------------------------------------------------


def test_job_api_tokens_are_scoped_to_their_attempt(
    env: Env, running: tuple[dict[str, Any], Claim, httpx.Client]
) -> None:
    job, claimed, client = running
    spec = client.get("/spec")
    assert spec.status_code == 200, spec.text
    body = spec.json()
    assert (body["job_id"], body["attempt_id"], body["attempt"]) == (
        job["id"],
        claimed.attempt.id,
        1,
    )
    assert body["model"] == "text" and body["code"] is None and body["seed"] == 0
    assert body["dataset"]["dataset"] == "reviews" and "train_x.npy" in body["dataset"]["files"]

    for token in (mint_token(), env.server.admin_token, "garbage"):
        with job_api(env, claimed, token) as stranger:
            response = stranger.get("/spec")
            assert response.status_code == 401 and error_of(response)["code"] == "unauthorized"
    no_token = httpx.get(f"{env.server.url}{API}/job-api/{claimed.attempt.id}/spec")
    assert no_token.status_code == 401
    elsewhere = httpx.get(
        f"{env.server.url}{API}/job-api/att_someone_else/spec",
        headers={"Authorization": f"Bearer {claimed.token}"},
    )
    assert elsewhere.status_code == 401
    # An API token is no job token, and a job token is no API token.
    assert (
        httpx.get(
            f"{env.server.url}{API}/jobs", headers={"Authorization": f"Bearer {claimed.token}"}
        ).status_code
        == 401
    )
    # Runner traffic is audited only when refused.
    assert client.post("/heartbeat").status_code == 200
    with job_api(env, claimed, mint_token()) as stranger:
        assert stranger.post("/heartbeat").status_code == 401
    with env.server.client() as admin:
        events = admin.get(f"{API}/audit", params={"limit": 1000}).json()["events"]
    beats = [
        e["status"]
        for e in events
        if e["resource"] == f"{API}/job-api/{claimed.attempt.id}/heartbeat"
    ]
    assert beats == [401]


def test_job_api_blobs_are_the_jobs_inputs_only(
    env: Env, running: tuple[dict[str, Any], Claim, httpx.Client]
) -> None:
    _, _, client = running
    files = client.get("/spec").json()["dataset"]["files"]
    key = files["train_x.npy"]["key"]
    got = client.get(f"/blobs/{key}")
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == key[-64:]
    digits = env.member.get(f"{API}/datasets/digits/versions/1").json()["files"]
    for other in (digits["train_x.npy"]["key"], "sha256/00/" + "0" * 64, "../../etc/passwd"):
        assert client.get(f"/blobs/{other}").status_code == 404, other


def test_heartbeat_metrics_progress_result(
    env: Env, running: tuple[dict[str, Any], Claim, httpx.Client]
) -> None:
    job, _, client = running
    assert client.post("/heartbeat").json() == {"cancel": False}
    assert (
        client.post("/metrics", json={"step": 1, "metrics": {"loss": 0.5, "acc": 1}}).status_code
        == 200
    )
    assert client.post("/metrics", json={"step": 2, "metrics": {"loss": 0.25}}).status_code == 200
    bad: dict[str, Any]
    for bad in (
        {"step": -1, "metrics": {}},
        {"step": 1, "metrics": {"loss": "high"}},
        {"step": 1, "metrics": {"bad name!": 1}},
        {"metrics": {}},
    ):
        assert client.post("/metrics", json=bad).status_code == 400, bad
    assert client.post("/metrics", content=b"{not json").status_code == 400
    progress = {"epoch": 1, "epochs": 3, "batch": 5, "batches": 10}
    assert client.post("/progress", json=progress).status_code == 200
    evaluation = {"accuracy": 0.75, "f1_macro": float("nan"), "per_class": {"a": {"f1": 1.0}}}
    result = client.post(
        "/result",
        content=json.dumps({"evaluation": evaluation}),
        headers={"Content-Type": "application/json"},
    )
    assert result.status_code == 200, result.text

    shown = env.member.get(f"{API}/jobs/{job['id']}").json()
    assert shown["state"] == "running" and shown["progress"] == progress
    assert shown["evaluation"] == {
        "accuracy": 0.75,
        "f1_macro": None,
        "per_class": {"a": {"f1": 1.0}},
    }
    metrics = env.member.get(f"{API}/jobs/{job['id']}/metrics").json()["metrics"]
    assert metrics["loss"] == [
        {"step": 1, "value": 0.5, "attempt": 1},
        {"step": 2, "value": 0.25, "attempt": 1},
    ]
    env.member.post(f"{API}/jobs/{job['id']}/cancel")
    assert client.post("/heartbeat").json() == {"cancel": True}


def key_of(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"sha256/{digest[:2]}/{digest}"


def test_checkpoints_survive_attempts_and_stale_attempts_are_fenced(
    env: Env, running: tuple[dict[str, Any], Claim, httpx.Client]
) -> None:
    job, first, client = running
    assert client.get("/checkpoints/latest").status_code == 404
    for step in (1, 2, 3):
        put = client.put(f"/checkpoints/{step}", content=f"state {step}".encode())
        assert put.status_code == 201, put.text
    latest = client.get("/checkpoints/latest")
    assert latest.content == b"state 3" and latest.headers["x-checkpoint-step"] == "3"
    pruned = hashlib.sha256(b"state 1").hexdigest()
    assert not (env.server.home / "blobs" / "sha256" / pruned[:2] / pruned).exists()
    assert client.put("/checkpoints/-1", content=b"x").status_code == 400

    requeue(env, first)
    second = claim(env, job["id"])
    with job_api(env, second) as successor:
        resumed = successor.get("/checkpoints/latest")
        assert resumed.content == b"state 3" and resumed.headers["x-checkpoint-step"] == "3"
        ref = successor.get("/checkpoints/latest/ref").json()  # what the runtime reads
        assert ref == {"step": 3, "key": key_of(b"state 3"), "size": len(b"state 3")}
        assert successor.get(f"/blobs/{ref['key']}").content == b"state 3"
        assert successor.get(f"/blobs/{key_of(b'state 2')}").status_code == 404  # not latest
        assert successor.get("/spec").json()["attempt"] == 2
        for method, path in (
            ("GET", "/spec"),
            ("POST", "/heartbeat"),
            ("PUT", "/checkpoints/9"),
            ("PUT", "/artifacts/spec.json"),
            ("GET", "/checkpoints/latest"),
        ):
            stale = client.request(method, path, content=b"late" if method == "PUT" else None)
            assert stale.status_code == 409, (path, stale.text)
            assert error_of(stale)["code"] == "fenced"
        assert successor.get("/checkpoints/latest").content == b"state 3"
        finish(env, second)
        done = successor.post("/heartbeat")
        assert done.status_code == 409


def test_artifacts_replace_and_show_in_the_job(
    env: Env, running: tuple[dict[str, Any], Claim, httpx.Client]
) -> None:
    job, _, client = running
    assert client.put("/artifacts/spec.json", content=b'{"v": 1}').status_code == 201
    replaced = client.put("/artifacts/spec.json", content=b'{"v": 2}')
    assert replaced.status_code == 201
    assert client.put("/artifacts/weights.safetensors", content=b"w" * 100).status_code == 201
    for bad in ("Bad Name", ".hidden", "a..b", "x" * 80):
        assert client.put(f"/artifacts/{bad}", content=b"x").status_code == 400, bad
    old = hashlib.sha256(b'{"v": 1}').hexdigest()
    assert not (env.server.home / "blobs" / "sha256" / old[:2] / old).exists()
    artifacts = env.member.get(f"{API}/jobs/{job['id']}").json()["artifacts"]
    spec, weights = (
        hashlib.sha256(b'{"v": 2}').hexdigest(),
        hashlib.sha256(b"w" * 100).hexdigest(),
    )
    assert replaced.json() == {"name": "spec.json", "key": f"sha256/{spec[:2]}/{spec}", "size": 8}
    assert artifacts == [
        replaced.json(),
        {"name": "weights.safetensors", "key": f"sha256/{weights[:2]}/{weights}", "size": 100},
    ]


# --- logs -------------------------------------------------------------------------------------


def test_logs_as_json_and_as_server_sent_events(
    env: Env, running: tuple[dict[str, Any], Claim, httpx.Client]
) -> None:
    job, claimed, client = running
    with env.db.session(write=True) as s:
        job_outputs.append_logs(s, claimed.attempt.id, ["one\n", "two\n"], datetime.now(UTC))
    client.post("/progress", json={"epoch": 1, "epochs": 1, "batch": 1, "batches": 1})
    page = env.member.get(f"{API}/jobs/{job['id']}/logs").json()
    assert page == {
        "chunks": [
            {"seq": 1, "attempt": 1, "data": "one\n"},
            {"seq": 2, "attempt": 1, "data": "two\n"},
        ],
        "next": 2,
        "done": False,
    }
    assert env.member.get(f"{API}/jobs/{job['id']}/logs", params={"after": 2}).json() == {
        "chunks": [],
        "next": 2,
        "done": False,
    }
    finish(env, claimed)
    events = follow(env.member, job["id"], after=1)
    assert [e for e, _ in events] == ["log", "progress", "end"]
    assert events[0][1] == {"seq": 2, "attempt": 1, "data": "two\n"}
    assert events[2][1] == {"state": "succeeded", "exit_reason": "succeeded"}
    assert env.member.get(f"{API}/jobs/{job['id']}/logs", params={"after": 2}).json()["done"]


def test_follow_streams_while_the_job_runs(
    env: Env, running: tuple[dict[str, Any], Claim, httpx.Client]
) -> None:
    job, claimed, _ = running

    def later() -> None:
        with env.db.session(write=True) as s:
            job_outputs.append_logs(s, claimed.attempt.id, ["late line\n"], datetime.now(UTC))
        finish(env, claimed, 3)

    timer = threading.Timer(0.5, later)
    timer.start()
    events = follow(env.member, job["id"])
    timer.join()
    assert events[0] == ("log", {"seq": 1, "attempt": 1, "data": "late line\n"})
    assert events[-1][0] == "end" and events[-1][1]["state"] == "failed"
    assert "not retried" in events[-1][1]["exit_reason"]


def test_a_log_stream_does_not_hold_up_a_shutdown(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", env=API_ONLY).start()
    try:
        with server.client() as admin:
            admin.post(
                f"{API}/datasets/tiny/versions",
                params={"filename": "t.csv"},
                content=csv_bytes("stop"),
            )
            job = admin.post(f"{API}/jobs", json={"dataset": "tiny", "model": "text"}).json()
            opened, seen = threading.Event(), list[str]()

            def listen() -> None:
                with admin.stream(
                    "GET", f"{API}/jobs/{job['id']}/logs", params={"follow": "true"}
                ) as response:
                    opened.set()
                    seen.extend(response.iter_lines())

            reader = threading.Thread(target=listen)
            reader.start()
            assert opened.wait(10)
            started = time.monotonic()
            server.stop()
            reader.join(10)
            assert time.monotonic() - started < 8 and not reader.is_alive()
            assert not any(line.startswith("event: end") for line in seen)
    finally:
        server.kill()
