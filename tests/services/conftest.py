"""Real services over a migrated metadata store and an in-memory blob store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nimbus.datasets.domain import (
    Format,
    IngestLimits,
    IngestOptions,
    PreparedDataset,
    SplitInfo,
    Task,
)
from nimbus.db.engine import Database
from nimbus.security import Principal, Role
from nimbus.services.tokens import TokenService
from nimbus.storage.blobs import BlobStore
from nimbus.storage.memory import MemoryObjectStore
from tests.helpers import migrated_sqlite


def fake_ingest(
    source: Path, filename: str, options: IngestOptions, limits: IngestLimits, workdir: Path
) -> PreparedDataset:
    """Stands in for nimbus.datasets.ingest: two 'prepared' files derived from the source
    (one of them the same for every source, to exercise shared blobs)."""
    data = source.read_bytes()
    (workdir / "train_x.npy").write_bytes(b"x:" + data)
    (workdir / "train_y.npy").write_bytes(b"always the same")
    return PreparedDataset(
        task=Task.TEXT,
        format=Format.TEXT_CSV,
        classes=["neg", "pos"],
        splits={"train": SplitInfo(2, {"neg": 1, "pos": 1})},
        schema={"dtype": "str"},
        files={"train_x.npy": workdir / "train_x.npy", "train_y.npy": workdir / "train_y.npy"},
    )


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path / "nimbus.db"))
    yield database
    database.dispose()


@pytest.fixture
def memory() -> MemoryObjectStore:
    return MemoryObjectStore()


@pytest.fixture
def blobs(memory: MemoryObjectStore, tmp_path: Path) -> BlobStore:
    return BlobStore(memory, tmp_path / "staging")


@pytest.fixture
def make_principal(db: Database) -> Callable[..., Principal]:
    service = TokenService(db)
    operator = service.authenticate(service.ensure_bootstrap_admin() or "")

    def make(tenant: str = "acme", role: Role = Role.MEMBER) -> Principal:
        created = service.create(operator, f"{tenant}-{role}", role, tenant)
        return service.authenticate(created.token)

    return make
