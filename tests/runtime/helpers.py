"""A fake control plane for the job_api routes, and the harness that runs a job against it.

:class:`FakeJobApi` implements the job_api routes of docs/api.md in memory (a Starlette app
under uvicorn in a thread, on an ephemeral port), so the job runtime is tested over real
HTTP without the real server. The ``harness`` fixture (tests/runtime/conftest.py) starts one
per test.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nimbus.datasets.domain import SPLITS
from nimbus.runtime import entry
from nimbus.runtime.data import DataSplits
from nimbus.runtime.job_api import JobApiClient, JobStop

TOKEN = "njt_test_token"


def blob_key(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"sha256/{digest[:2]}/{digest}"


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@dataclass
class FakeJobApi:
    """The job_api routes of one job, its state in memory; tests read and steer it."""

    spec: dict[str, Any] = field(default_factory=dict)
    current_attempt: str = "att_1"
    attempt_number: int = 1
    blobs: dict[str, bytes] = field(default_factory=dict)
    checkpoints: list[tuple[int, bytes, str]] = field(default_factory=list)  # step, data, attempt
    checkpoint_epochs: list[str | None] = field(default_factory=list)  # ?epoch= of each PUT
    metrics: list[tuple[str, int, dict[str, float]]] = field(default_factory=list)
    progress: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    artifact_puts: int = 0
    max_artifact_bytes: int | None = None  # larger artifacts answer 413, as the server does
    results: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)
    heartbeats: int = 0
    cancel: bool = False
    failures: int = 0  # answer the next n requests with 503
    fence_after_checkpoints: int | None = None  # replace the attempt after n checkpoints
    checkpoint_delay: float = 0.0
    metrics_delay: float = 0.0  # seconds each metrics post takes
    progress_gate: threading.Event | None = None  # progress posts wait until it is set
    fence_on_route: str | None = None  # replace the attempt when this route is called

    # -- steering ----------------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        key = blob_key(data)
        self.blobs[key] = data
        return key

    def use_dataset(self, data: DataSplits, name: str = "digits") -> dict[str, Any]:
        """Store ``data``'s splits as prepared .npy blobs; returns the version object."""
        files = {}
        for split in SPLITS:
            for part in ("x", "y"):
                raw = npy_bytes(getattr(getattr(data, split), part))
                files[f"{split}_{part}.npy"] = {"key": self.add_blob(raw), "size": len(raw)}
        schema: dict[str, Any] = {"shape": list(data.train.x.shape[1:])}
        if data.features:
            schema["features"] = list(data.features)
        return {
            "dataset": name,
            "version": 1,
            "task": str(data.task),
            "classes": list(data.classes),
            "num_classes": len(data.classes),
            "schema": schema,
            "files": files,
        }

    def job(
        self,
        data: DataSplits,
        model: str = "cnn",
        params: dict[str, Any] | None = None,
        code: bytes | None = None,
        entry: str = "train.py",
        workers: int = 1,
        cpus: float = 1.0,
        memory: int = 1 << 30,
    ) -> None:
        """Make this the job: a built-in ``model``, or a script ``code``; ``cpus`` and
        ``memory`` per worker."""
        self.spec = {
            "job_id": "job_1",
            "model": model if code is None else f"code:{blob_key(code)}",
            "params": params or {},
            "seed": None,
            "workers": workers,
            "resources": {"cpus": cpus, "gpus": 0, "memory": memory, "workers": workers},
            "dataset": self.use_dataset(data),
            "code": None if code is None else self._code(code, entry),
        }

    def _code(self, code: bytes, entry: str) -> dict[str, Any]:
        kind = "tar" if tarfile.is_tarfile(io.BytesIO(code)) else "py"
        return {"key": self.add_blob(code), "entry": entry, "format": kind, "size": len(code)}

    def new_attempt(self) -> str:
        """Fence the current attempt and start the next one; returns its id."""
        self.attempt_number += 1
        self.current_attempt = f"att_{self.attempt_number}"
        return self.current_attempt

    def series(self, name: str, attempt: str | None = None) -> list[tuple[int, float]]:
        return [
            (step, values[name])
            for att, step, values in self.metrics
            if name in values and attempt in (None, att)
        ]

    # -- the routes --------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        attempt, route = request.path_params["attempt"], request.path_params["route"]
        self.requests.append((request.method, route))
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return _error(401, "unauthorized", "bad token")
        if self.failures > 0:
            self.failures -= 1
            return _error(503, "unavailable", "try again")
        if route == self.fence_on_route:
            self.current_attempt = "att_replaced"
        if attempt != self.current_attempt:
            return _error(409, "fenced", f"attempt {attempt} is not the current attempt")
        method = request.method
        if method == "GET" and route == "spec":
            spec = {**self.spec, "attempt_id": attempt, "attempt": self.attempt_number}
            return JSONResponse(spec)
        if method == "GET" and route.startswith("blobs/"):
            data = self.blobs.get(route.removeprefix("blobs/"))
            return Response(data) if data is not None else _error(404, "not_found", route)
        if method == "POST" and route == "heartbeat":
            self.heartbeats += 1
            return JSONResponse({"cancel": self.cancel})
        if method == "POST" and route == "metrics":
            body = await request.json()
            if self.metrics_delay:
                await asyncio.sleep(self.metrics_delay)
            self.metrics.append((attempt, int(body["step"]), dict(body["metrics"])))
            return JSONResponse({}, status_code=201)
        if method == "POST" and route == "progress":
            while self.progress_gate is not None and not self.progress_gate.is_set():
                await asyncio.sleep(0.01)
            self.progress.append({"attempt": attempt, **(await request.json())})
            return JSONResponse({})
        if method == "PUT" and route.startswith("checkpoints/"):
            self.checkpoint_epochs.append(request.query_params.get("epoch"))
            return await self._put_checkpoint(request, attempt, int(route.split("/")[1]))
        if method == "GET" and route == "checkpoints/latest/ref":
            if not self.checkpoints:
                return _error(404, "not_found", "no checkpoint")
            step, data, _ = self.checkpoints[-1]
            digest = hashlib.sha256(data).hexdigest()
            key = f"sha256/{digest[:2]}/{digest}"
            self.blobs[key] = data  # read as a blob, as the control plane serves it
            return JSONResponse({"step": step, "key": key, "size": len(data)})
        if method == "PUT" and route.startswith("artifacts/"):
            body = await request.body()
            if self.max_artifact_bytes is not None and len(body) > self.max_artifact_bytes:
                return _error(413, "payload_too_large", f"an artifact of {len(body)} bytes")
            self.artifacts[route.removeprefix("artifacts/")] = body
            self.artifact_puts += 1
            return JSONResponse({}, status_code=201)
        if method == "POST" and route == "result":
            self.results.append((await request.json())["evaluation"])
            return JSONResponse({})
        return _error(404, "not_found", f"{method} {route}")

    async def _put_checkpoint(self, request: Request, attempt: str, step: int) -> Response:
        data = await request.body()  # recorded only once the whole body arrived
        if self.checkpoint_delay:
            await asyncio.sleep(self.checkpoint_delay)
        self.checkpoints.append((step, data, attempt))
        if self.fence_after_checkpoints is not None and (
            sum(1 for *_, att in self.checkpoints if att == attempt) >= self.fence_after_checkpoints
        ):
            self.current_attempt = "att_replaced"
        return JSONResponse({}, status_code=201)

    def app(self) -> Starlette:
        route = Route(
            "/api/v1/job-api/{attempt}/{route:path}", self.handle, methods=["GET", "POST", "PUT"]
        )
        return Starlette(routes=[route])


class ServerThread:
    """uvicorn serving an app from a thread on 127.0.0.1 (``port=0``: any free port)."""

    def __init__(self, app: Starlette, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the fake job_api did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@dataclass
class Harness:
    """A fake job_api on a port, and the environment of a job process that talks to it."""

    job_api: FakeJobApi
    server: ServerThread
    root: Path

    def env(self, attempt: str | None = None, **extra: str) -> dict[str, str]:
        attempt = attempt or self.job_api.current_attempt
        return {
            "NIMBUS_URL": self.server.url,
            "NIMBUS_JOB_ID": "job_1",
            "NIMBUS_ATTEMPT_ID": attempt,
            "NIMBUS_JOB_TOKEN": TOKEN,
            "NIMBUS_JOB_DIR": str(self.root / "jobs" / attempt),
            "NIMBUS_CACHE_DIR": str(self.root / "cache"),
            "NIMBUS_HEARTBEAT_SECONDS": "0.2",
            "NIMBUS_RETRY_SECONDS": "5",
            **extra,
        }

    def process_env(self, attempt: str | None = None, **extra: str) -> dict[str, str]:
        """For ``python -m nimbus.runtime.entry`` as a real process."""
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        }
        return {**base, **self.env(attempt, **extra)}

    def client(self, **kwargs: Any) -> JobApiClient:
        options: dict[str, Any] = {"retry_seconds": 5.0, **kwargs}
        return JobApiClient(
            self.server.url,
            self.job_api.current_attempt,
            TOKEN,
            cache_dir=self.root / "cache",
            **options,
        )


@contextmanager
def running(root: Path) -> Iterator[Harness]:
    """A fresh fake job_api serving on a port while in the block (each test module's
    ``harness`` fixture)."""
    job_api = FakeJobApi()
    server = ServerThread(job_api.app()).start()
    try:
        yield Harness(job_api, server, root)
    finally:
        server.stop()


PYTHON = sys.executable


def spawn_entry_until(harness: Harness, marker: str) -> subprocess.Popen[str]:
    """``python -m nimbus.runtime.entry`` as its own process, returned once its stdout
    printed a line containing ``marker`` (it must not exit first)."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "nimbus.runtime.entry"],
        env=harness.process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    while marker not in proc.stdout.readline():
        if proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"the entry process exited before printing {marker!r}")
    return proc


def run_main(harness: Harness, attempt: str | None = None) -> int:
    """One attempt in this process. A cancel or fence seen by the heartbeat thread would end
    the process; here it is ignored and left to the next call of the main thread."""
    stops: list[JobStop] = []
    return entry.main(harness.env(attempt), on_stop=stops.append)


def write_dataset(data: DataSplits, directory: Path) -> Path:
    """What ``nimbus datasets download`` leaves: the prepared .npy files and version.json."""
    directory.mkdir(parents=True)
    for split in SPLITS:
        np.save(directory / f"{split}_x.npy", getattr(data, split).x)
        np.save(directory / f"{split}_y.npy", getattr(data, split).y)
    version = {
        "task": str(data.task),
        "classes": data.classes,
        "schema": {"features": data.features} if data.features else {},
    }
    (directory / "version.json").write_text(json.dumps(version))
    return directory
