"""Blob references: which record holds which blob.

A blob may be deleted only when no reference to it remains. Every transaction that adds or
removes references, or deletes blobs, first calls :func:`lock`: on PostgreSQL a
transaction-scoped advisory lock, on SQLite the write lock that
``Database.session(write=True)`` already holds. Unreferenced blobs are deleted while that
lock is held, and an operation that stores blobs pins their keys (``UPLOAD_PIN``
references) *before* storing them, so "blob deleted" can never slip in between "blob
stored" and "reference recorded".
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from nimbus.db.tables import BlobRefRow

DATASET_VERSION = "dataset_version"
UPLOAD_PIN = "upload"  # held by an upload in progress, until its version row exists
_PG_LOCK_ID = 0x4E424C42  # "NBLB"


def lock(session: Session) -> None:
    """Serialise reference changes with blob deletion until this transaction ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})


def add(session: Session, owner_kind: str, owner_id: int, keys: Iterable[str]) -> None:
    """Record that the owner holds each of ``keys`` (duplicates are stored once)."""
    session.add_all(
        BlobRefRow(blob_key=key, owner_kind=owner_kind, owner_id=owner_id)
        for key in sorted(set(keys))
    )
    session.flush()


def keys_of(session: Session, owner_kind: str, owner_id: int) -> list[str]:
    query = select(BlobRefRow.blob_key).where(
        BlobRefRow.owner_kind == owner_kind, BlobRefRow.owner_id == owner_id
    )
    return sorted(set(session.scalars(query)))


def unreferenced(session: Session, keys: Iterable[str]) -> list[str]:
    """Those of ``keys`` that nothing refers to."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    query = (
        select(BlobRefRow.blob_key, func.count())
        .where(BlobRefRow.blob_key.in_(wanted))
        .group_by(BlobRefRow.blob_key)
    )
    held = {key for key, count in session.execute(query) if count > 0}
    return [key for key in wanted if key not in held]


def release(session: Session, owner_kind: str, owner_id: int) -> list[str]:
    """Drop the owner's references; return its keys that no longer have any."""
    keys = keys_of(session, owner_kind, owner_id)
    session.execute(
        delete(BlobRefRow).where(
            BlobRefRow.owner_kind == owner_kind, BlobRefRow.owner_id == owner_id
        )
    )
    session.flush()
    return unreferenced(session, keys)
