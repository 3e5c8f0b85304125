"""Audit events' ids only grow: on SQLite the table is rebuilt with AUTOINCREMENT (its
``sqlite_sequence`` starts at the highest id kept), so that ids freed by the retention
sweep are never given to new events. PostgreSQL's sequence never reuses one: nothing to do.

Revision ID: 0020
Revises: 0019
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "audit_events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "audit_events", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ):
        pass
