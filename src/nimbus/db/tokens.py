"""Token repository. Only hashes are stored; secrets never reach this module."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from nimbus.db.tables import Tenant, Token


def create(
    session: Session,
    *,
    token_id: str,
    tenant_id: int,
    name: str,
    role: str,
    token_hash: str,
    created_by: str | None,
    expires_at: datetime | None = None,
) -> Token:
    token = Token(
        id=token_id,
        tenant_id=tenant_id,
        name=name,
        role=role,
        token_hash=token_hash,
        created_by=created_by,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return token


def get(session: Session, token_id: str) -> Token | None:
    return session.get(Token, token_id)


def names(session: Session, tenant_id: int, token_ids: set[str]) -> dict[str, str]:
    """The names of the tenant's tokens among ``token_ids`` (one query)."""
    if not token_ids:
        return {}
    query = select(Token.id, Token.name).where(
        Token.tenant_id == tenant_id, Token.id.in_(token_ids)
    )
    return {token_id: name for token_id, name in session.execute(query).tuples()}


def find_by_hash(session: Session, token_hash: str) -> tuple[Token, Tenant] | None:
    """The token with this hash and its tenant, revoked or not."""
    row = session.execute(
        select(Token, Tenant)
        .join(Tenant, Tenant.id == Token.tenant_id)
        .where(Token.token_hash == token_hash)
    ).first()
    return None if row is None else (row[0], row[1])


def list_for_tenant(session: Session, tenant_id: int) -> list[Token]:
    """A tenant's tokens, oldest first."""
    query = select(Token).where(Token.tenant_id == tenant_id).order_by(Token.created_at, Token.id)
    return list(session.scalars(query))


def revoke(session: Session, token: Token, at: datetime) -> Token:
    """Mark a token revoked; revoking twice keeps the first time."""
    if token.revoked_at is None:
        token.revoked_at = at
        session.flush()
    return token


def has_usable_admin(session: Session, tenant_id: int, now: datetime) -> bool:
    """Whether the tenant has an admin token that is neither revoked nor expired."""
    query = select(Token.id).where(
        Token.tenant_id == tenant_id,
        Token.role == "admin",
        Token.revoked_at.is_(None),
        or_(Token.expires_at.is_(None), Token.expires_at > now),
    )
    return session.scalars(query.limit(1)).first() is not None
