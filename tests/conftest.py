"""Shared fixtures: real servers, a real PostgreSQL, temporary NIMBUS_HOMEs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PostgresServer, ServerProcess, migrated_sqlite

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


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Like ``database_url``, with the schema at head already (a copy: see
    :func:`tests.helpers.migrated_sqlite`); for the tests of what lies above the schema."""
    if request.param == "sqlite":
        return migrated_sqlite(tmp_path / "nimbus.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"t{os.getpid()}_{next(_db_counter)}", migrated=True)


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs two workers), a module's tests run on one
    worker, so its module-scoped servers start once; and ``tests/ray`` is one group: its
    Ray cluster (package-scoped) starts once, on one worker. The groups that hold slow tests
    go first, so that no long one is left to run alone at the end."""
    ray = Path(__file__).parent / "ray"
    groups: dict[str, bool] = {}
    for item in items:
        group = "ray" if ray in item.path.parents else item.nodeid.partition("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
        groups[group] = groups.get(group, False) or item.get_closest_marker("slow") is not None
    order = {group: rank for rank, group in enumerate(sorted(groups, key=lambda g: not groups[g]))}
    items.sort(key=lambda item: order[_group_of(item)])


def _group_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker is not None else ""
