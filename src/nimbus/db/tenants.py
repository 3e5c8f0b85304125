"""Tenant repository: every resource belongs to exactly one tenant."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from nimbus.db.tables import Tenant


def get(session: Session, tenant_id: int) -> Tenant | None:
    return session.get(Tenant, tenant_id)


def get_by_name(session: Session, name: str) -> Tenant | None:
    return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def get_or_create(session: Session, name: str) -> Tenant:
    """The tenant called ``name``, created if missing (safe when two servers race)."""
    tenant = get_by_name(session, name)
    if tenant is not None:
        return tenant
    try:
        with session.begin_nested():
            tenant = Tenant(name=name)
            session.add(tenant)
    except IntegrityError:
        tenant = get_by_name(session, name)
        if tenant is None:
            raise
    return tenant
