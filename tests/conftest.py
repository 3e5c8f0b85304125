"""Shared fixtures: real servers, a real PostgreSQL, temporary NIMBUS_HOMEs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PostgresServer, ServerProcess

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster for the whole session. Skipped only where no server is installed
    (never on CI, where `make test` installs it)."""
    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database per test."""
    return postgres.create_database(f"t{os.getpid()}_{next(_db_counter)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Parametrizes a test over both metadata store backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nimbus.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def nimbus_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh real server (uvicorn, SQLite, local blobs) for one test."""
    proc = ServerProcess(tmp_path / "server-home")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server shared by the tests of a module (cheaper; tests must not interfere)."""
    proc = ServerProcess(tmp_path_factory.mktemp("shared") / "home")
    proc.start()
    yield proc
    proc.stop()
