"""The repositories' store: both backends, migrated, with two tenants (1 acme, 2 globex)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nimbus.db.engine import Database
from nimbus.db.tables import Tenant


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    database = Database(migrated_url)
    with database.session(write=True) as s:
        s.add_all([Tenant(id=1, name="acme"), Tenant(id=2, name="globex")])
    yield database
    database.dispose()
