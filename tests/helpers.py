"""Real components for tests: a Nimbus server process and a throwaway PostgreSQL."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session

from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.system import free_port


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@functools.cache
def _sqlite_schema() -> Path:
    """This test process's SQLite store at the head revision, migrated once (the migrations
    take 0.3-0.6 s of CPU per store; their own tests, tests/db/test_engine.py, run them)."""
    path = Path(tempfile.mkdtemp(prefix="nimbus-schema-")) / "nimbus.db"
    atexit.register(shutil.rmtree, path.parent, True)
    db = Database(f"sqlite:///{path}")
    try:
        upgrade(db.engine)
    finally:
        db.dispose()
    return path


def migrated_sqlite(path: Path) -> str:
    """A new SQLite store at ``path`` with the schema at head, as the migrations leave it
    (copied with SQLite's backup API from :func:`_sqlite_schema`), 0600 as the server makes
    it; returns its URL."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    with (
        contextlib.closing(sqlite3.connect(_sqlite_schema())) as source,
        contextlib.closing(sqlite3.connect(path)) as target,
    ):
        source.backup(target)
    return f"sqlite:///{path}"


class ServerProcess:
    """``python -m nimbus.server`` on an ephemeral port with its own NIMBUS_HOME."""

    def __init__(self, home: Path, env: dict[str, str] | None = None, port: int | None = None):
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.clients: list[httpx.Client] = []
        self.log_path = self.home.parent / f"{self.home.name}-server.log"
        self.stdin: int = subprocess.DEVNULL  # a pty's file descriptor: an interactive server

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
        env.update({"NIMBUS_HOME": str(self.home), "NIMBUS_URL": self.url})
        # pytest's tmp dirs are 0700, out of the job uids' reach: a sandboxing server would
        # refuse to run jobs there. The sandbox's own tests ask for it on a home it reaches.
        env["NIMBUS_JOB_ISOLATION"] = "none"
        # Most test servers run no job, or one: the fork server's zygote (~5 s of CPU for its
        # imports) starts with the first job instead of with every server.
        env["NIMBUS_EXECUTOR_WARM_UP"] = "first-job"
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        store = self.home / "nimbus.db"
        if "NIMBUS_DATABASE_URL" not in self.extra_env and not store.exists():
            migrated_sqlite(store)  # the server's start migrates nothing more
        with open(self.log_path, "ab") as log:  # the server keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "nimbus.server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=self.env(),
                # Not a terminal, whatever runs the tests: a server run by a program keeps
                # its deployments' replicas when stopped (see nimbus.server.keeps_deployments).
                stdin=self.stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_http(f"{self.url}/healthz", timeout, self.proc)
        except Exception:
            self.kill()
            raise RuntimeError(f"server failed to start:\n{self.log()}") from None
        return self

    @property
    def admin_token(self) -> str:
        return (self.home / "admin-token").read_text().strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, token: str | None = None) -> httpx.Client:
        """A client of this server, closed (if the test has not) when the server stops or is
        killed: a client left to the garbage collector is an unclosed socket."""
        client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token or self.admin_token}"},
            timeout=60.0,
        )
        self.clients.append(client)
        return client

    def _close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
        self._close_clients()

    def kill(self) -> None:
        """SIGKILL the whole process group: a real crash."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        self._close_clients()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pg_bindir() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temp dir (initdb + pg_ctl), trust auth on loopback."""

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="nimbus-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_root:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.dir)

    def start(self) -> str:
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "nimbus",
            "-E",
            "UTF8",
            "--no-sync",
        )
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            opts,
            "-w",
            "-l",
            str(self.dir / "pg.log"),
            "start",
        )
        self._run(
            str(self.bindir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "nimbus",
            "nimbus",
        )
        return self.url("nimbus")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://nimbus@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, *, migrated: bool = False) -> str:
        """A new database; ``migrated``: with the schema at head, PostgreSQL's copy of a
        template this cluster migrated once."""
        template = ["-T", self._schema_template] if migrated else []
        self._run(
            str(self.bindir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "nimbus",
            *template,
            name,
        )
        return self.url(name)

    @functools.cached_property
    def _schema_template(self) -> str:
        name = "nimbus_schema"
        self.create_database(name)
        db = Database(self.url(name))
        try:
            upgrade(db.engine)
        finally:
            db.dispose()  # a template is copied only while nobody is connected to it
        return name

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def rolled_back(db: Database) -> Iterator[Session]:
    """A write transaction that leaves nothing behind (SQLite's write lock taken up front,
    as the store's own writes take it)."""
    with Session(db.engine) as s:
        if db.engine.dialect.name == "sqlite":
            s.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
        try:
            yield s
        finally:
            s.rollback()


def follow(
    client: httpx.Client,
    job_id: str,
    after: int = 0,
    until: Callable[[str], bool] = lambda e: e == "end",
) -> list[tuple[str, Any]]:
    """The events of ``GET logs?follow=true`` up to the first one ``until`` accepts."""
    events: list[tuple[str, Any]] = []
    kind = ""
    with client.stream(
        "GET", f"/api/v1/jobs/{job_id}/logs", params={"follow": "true", "after": after}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
                if until(kind):
                    break
    return events


def sandbox_runs_here() -> bool:
    """Whether a server can sandbox jobs here: as root, with bubblewrap."""
    return os.geteuid() == 0 and shutil.which("bwrap") is not None


@contextlib.contextmanager
def passable_dir() -> Iterator[Path]:
    """A directory sandboxed jobs' uids may pass through (pytest's own tmp dirs are 0700);
    skips the test where the sandbox cannot run (not root, no bubblewrap)."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root")
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (make services)")
    path = Path(tempfile.mkdtemp(prefix="nimbus-sandbox-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
