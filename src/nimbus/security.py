"""Tokens, roles and permission checks: pure functions, no HTTP and no SQL.

A token secret is ``nbt_`` followed by 43 URL-safe characters (256 random bits). Only its
SHA-256 is stored: for a uniformly random 256-bit secret a fast hash is as strong as a slow
one, and it lets the server find the token by an indexed lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from nimbus.errors import Forbidden

TOKEN_PREFIX = "nbt_"
TOKEN_ID_PREFIX = "tok_"
BOOTSTRAP_TENANT = "default"
_TOKEN_RE = re.compile(r"^nbt_[A-Za-z0-9_-]{43}$")


def generate_token() -> str:
    """A new secret: ``nbt_`` + 43 characters of ``secrets.token_urlsafe(32)``."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def generate_token_id() -> str:
    """A public identifier for a token (safe to show, log and audit)."""
    return TOKEN_ID_PREFIX + secrets.token_hex(12)


def hash_token(secret: str) -> str:
    """The stored form of a secret: its SHA-256 as 64 hex characters."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def looks_like_token(secret: str) -> bool:
    """Cheap shape check, so garbage never reaches the database."""
    return bool(_TOKEN_RE.match(secret))


def hashes_match(stored_hash: str, secret: str) -> bool:
    """Constant-time comparison of a stored hash with the hash of ``secret``."""
    return hmac.compare_digest(stored_hash.encode("ascii"), hash_token(secret).encode("ascii"))


class Role(StrEnum):
    """What a token may do; each role includes the ones below it."""

    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def includes(self, other: Role) -> bool:
        """True when this role may do everything ``other`` may."""
        return self.rank >= other.rank


_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """Who is calling: one token in one tenant."""

    tenant_id: int
    tenant: str
    token_id: str
    token_name: str
    role: Role

    @property
    def is_operator(self) -> bool:
        """An admin of the bootstrap tenant: may manage tokens in every tenant."""
        return self.role is Role.ADMIN and self.tenant == BOOTSTRAP_TENANT


def require_role(principal: Principal, minimum: Role) -> None:
    """Raise Forbidden unless the principal's role includes ``minimum``."""
    if not principal.role.includes(minimum):
        raise Forbidden(
            f"this needs the {minimum} role; token {principal.token_name!r} is a {principal.role}"
        )


def require_tenant_admin(principal: Principal, tenant: str) -> None:
    """Raise Forbidden unless the principal may manage tokens of ``tenant``."""
    require_role(principal, Role.ADMIN)
    if tenant != principal.tenant and not principal.is_operator:
        raise Forbidden(
            f"only admins of the {BOOTSTRAP_TENANT!r} tenant may manage other tenants' tokens"
        )


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; naive values (SQLite drops the zone) are taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def token_usable(revoked_at: datetime | None, expires_at: datetime | None, now: datetime) -> bool:
    """A token authenticates only while it is neither revoked nor expired."""
    return revoked_at is None and (expires_at is None or as_utc(expires_at) > as_utc(now))
