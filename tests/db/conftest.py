"""The repositories' store: both backends, migrated, with two tenants (1 acme, 2 globex)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nimbus.db.engine import Database
from nimbus.db.migrate import upgrade
from nimbus.db.tables import Tenant


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    upgrade(database.engine)
    with database.session(write=True) as s:
        s.add_all([Tenant(id=1, name="acme"), Tenant(id=2, name="globex")])
    yield database
    database.dispose()
