"""Alembic environment: the engine is handed in by nimbus.db.migrate."""

from __future__ import annotations

from alembic import context

from nimbus.db.tables import Base

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
