"""The metadata store on both backends: migrations, pragmas, transactions."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select, text

from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.tables import Tenant

TABLES = {"tenants", "tokens", "datasets", "dataset_versions", "blob_refs", "audit_events"}


def test_migrations_create_schema_and_are_idempotent(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db.engine)
    upgrade(db.engine)
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    db.dispose()


def test_transaction_rolls_back_on_error(database_url: str) -> None:
    db = Database(database_url)
    upgrade(db.engine)
    with pytest.raises(RuntimeError), db.session(write=True) as s:
        s.add(Tenant(name="ghost"))
        s.flush()
        raise RuntimeError("boom")
    with db.session() as s:
        assert s.scalars(select(Tenant).where(Tenant.name == "ghost")).first() is None
    db.dispose()


def test_sqlite_pragmas(tmp_path: object) -> None:
    db = Database(f"sqlite:///{tmp_path}/x.db")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000
    db.dispose()


def test_concurrent_upgrades_on_postgres(pg_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    dbs = [Database(pg_url) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda d: upgrade(d.engine), dbs))
    assert set(inspect(dbs[0].engine).get_table_names()) >= TABLES
    for d in dbs:
        d.dispose()
