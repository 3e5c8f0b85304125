"""Wrapped data keys of encryption at rest: one per tenant (see nimbus.storage.keyring)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nimbus.db.tables import EncryptionKeyRow


def get(session: Session, key_id: str) -> EncryptionKeyRow | None:
    return session.get(EncryptionKeyRow, key_id)


def for_tenant(session: Session, tenant_id: int) -> EncryptionKeyRow | None:
    query = select(EncryptionKeyRow).where(EncryptionKeyRow.tenant_id == tenant_id)
    return session.scalars(query).first()


def add(
    session: Session,
    *,
    key_id: str,
    tenant_id: int,
    master_key_id: str,
    wrapped: bytes,
    now: datetime,
) -> EncryptionKeyRow:
    """Insert the tenant's key; the tenant's existing key when another writer won the race."""
    try:
        with session.begin_nested():
            row = EncryptionKeyRow(
                key_id=key_id,
                tenant_id=tenant_id,
                master_key_id=master_key_id,
                wrapped=wrapped,
                created_at=now,
            )
            session.add(row)
    except IntegrityError:
        existing = for_tenant(session, tenant_id)
        if existing is None:
            raise
        return existing
    return row


def count_by_master(session: Session) -> dict[str, int]:
    query = select(EncryptionKeyRow.master_key_id, func.count()).group_by(
        EncryptionKeyRow.master_key_id
    )
    return {master: int(count) for master, count in session.execute(query).tuples()}


def all_keys(session: Session) -> list[EncryptionKeyRow]:
    return list(session.scalars(select(EncryptionKeyRow).order_by(EncryptionKeyRow.key_id)))
