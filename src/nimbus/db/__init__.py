"""Metadata store: SQLAlchemy tables, engine and sessions, Alembic migrations."""
