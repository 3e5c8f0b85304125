"""API tokens: authenticate a secret, create, list and revoke tokens, bootstrap the admin."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from nimbus.db import tables, tenants, tokens
from nimbus.db.engine import Database
from nimbus.db.tables import utcnow
from nimbus.errors import InvalidInput, NotFound, Unauthorized
from nimbus.names import validate_name
from nimbus.security import (
    BOOTSTRAP_TENANT,
    Principal,
    Role,
    as_utc,
    generate_token,
    generate_token_id,
    hash_token,
    hashes_match,
    looks_like_token,
    require_role,
    require_tenant_admin,
    token_usable,
)
from nimbus.wire.tokens import NewToken, Token

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_TOKEN_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


class TokenRejected(Unauthorized):
    """A token that does not authenticate; ``principal`` is set when the token is known
    (revoked or expired), so the refusal can still be attributed in the audit log."""

    def __init__(self, message: str, principal: Principal | None = None) -> None:
        super().__init__(message)
        self.principal = principal


def token_view(row: tables.Token, tenant: str) -> Token:
    """A stored token as the API shows it: without its secret or hash."""
    return Token(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        tenant=tenant,
        created_at=as_utc(row.created_at),
        expires_at=None if row.expires_at is None else as_utc(row.expires_at),
        revoked_at=None if row.revoked_at is None else as_utc(row.revoked_at),
    )


def validate_token_name(name: str) -> str:
    if not isinstance(name, str) or not _TOKEN_NAME_RE.match(name) or not name.strip():
        raise InvalidInput("invalid token name: use 1-128 printable characters")
    return name


class TokenService:
    """Tokens of every tenant. Secrets exist only in return values, never in storage."""

    def __init__(self, db: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock

    def authenticate(self, secret: str | None) -> Principal:
        """The principal a bearer secret stands for; raises TokenRejected (401) otherwise."""
        if not secret:
            raise TokenRejected("missing bearer token: send 'Authorization: Bearer <token>'")
        if not looks_like_token(secret):
            raise TokenRejected("invalid token")
        with self.db.session() as session:
            found = tokens.find_by_hash(session, hash_token(secret))
        if found is None or not hashes_match(found[0].token_hash, secret):
            raise TokenRejected("invalid token")
        return self._usable(*found)

    def principal_of(self, token_id: str) -> Principal:
        """The principal of a token known by its id (a console session's), checked as
        :meth:`authenticate` checks a secret: revoked or expired tokens are rejected."""
        with self.db.session() as session:
            token = tokens.get(session, token_id)
            tenant = tenants.get(session, token.tenant_id) if token is not None else None
        if token is None or tenant is None:
            raise TokenRejected("invalid token")
        return self._usable(token, tenant)

    def _usable(self, token: tables.Token, tenant: tables.Tenant) -> Principal:
        principal = Principal(tenant.id, tenant.name, token.id, token.name, Role(token.role))
        if token.revoked_at is not None:
            raise TokenRejected("token has been revoked", principal)
        if not token_usable(None, token.expires_at, self.clock()):
            raise TokenRejected("token has expired", principal)
        return principal

    def create(
        self,
        principal: Principal,
        name: str,
        role: Role,
        tenant: str | None = None,
        expires_at: datetime | None = None,
    ) -> NewToken:
        """A new token; the answer holds the secret under ``token`` (shown once)."""
        tenant_name = validate_name(tenant, "tenant name") if tenant else principal.tenant
        require_tenant_admin(principal, tenant_name)
        validate_token_name(name)
        if expires_at is not None and as_utc(expires_at) <= as_utc(self.clock()):
            raise InvalidInput("invalid expires_at: it must be in the future")
        secret = generate_token()
        with self.db.session(write=True) as session:
            row_tenant = tenants.get_or_create(session, tenant_name)
            row = tokens.create(
                session,
                token_id=generate_token_id(),
                tenant_id=row_tenant.id,
                name=name,
                role=Role(role).value,
                token_hash=hash_token(secret),
                created_by=principal.token_id,
                expires_at=expires_at,
            )
            view = token_view(row, row_tenant.name)
        return NewToken(**view.model_dump(), token=secret)

    def list_tokens(self, principal: Principal) -> list[Token]:
        """The tokens of the caller's tenant (admins only)."""
        require_role(principal, Role.ADMIN)
        with self.db.session() as session:
            rows = tokens.list_for_tenant(session, principal.tenant_id)
            return [token_view(row, principal.tenant) for row in rows]

    def revoke(self, principal: Principal, token_id: str) -> Token:
        """Revoke a token of the caller's tenant (operators: of any tenant)."""
        require_role(principal, Role.ADMIN)
        with self.db.session(write=True) as session:
            row = tokens.get(session, token_id)
            tenant = tenants.get(session, row.tenant_id) if row is not None else None
            if (
                row is None
                or tenant is None
                or (row.tenant_id != principal.tenant_id and not principal.is_operator)
            ):
                raise NotFound(f"token {token_id!r} not found")
            tokens.revoke(session, row, self.clock())
            return token_view(row, tenant.name)

    def ensure_bootstrap_admin(self) -> str | None:
        """Create tenant ``default`` and, unless it has a usable admin token, one admin
        token whose secret is returned (the only time it exists outside the caller)."""
        with self.db.session(write=True) as session:
            tenant = tenants.get_or_create(session, BOOTSTRAP_TENANT)
            if tokens.has_usable_admin(session, tenant.id, self.clock()):
                return None
            secret = generate_token()
            tokens.create(
                session,
                token_id=generate_token_id(),
                tenant_id=tenant.id,
                name="admin",
                role=Role.ADMIN.value,
                token_hash=hash_token(secret),
                created_by=None,
            )
        return secret


def acting_member(session: Session, tenant_id: int, token_id: str | None, name: str) -> Principal:
    """The principal the platform acts as for a token's standing work (a study's trials, an
    AutoML job's registration): that token, as a member of its tenant, named ``name`` in the
    audit log (whoever starts such work is at least a member)."""
    tenant = tenants.get(session, tenant_id)
    return Principal(
        tenant_id=tenant_id,
        tenant=tenant.name if tenant is not None else str(tenant_id),
        token_id=token_id or "",
        token_name=name,
        role=Role.MEMBER,
    )
