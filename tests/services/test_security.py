"""Pure security helpers: token format and hashing, roles, permission checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nimbus.errors import Forbidden
from nimbus.security import (
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


def test_tokens_are_256_bit_and_hashed() -> None:
    secret = generate_token()
    assert secret.startswith("nbt_") and len(secret) == 4 + 43
    assert looks_like_token(secret)
    assert generate_token() != secret
    assert len(hash_token(secret)) == 64 and hash_token(secret) != secret
    assert hashes_match(hash_token(secret), secret)
    assert not hashes_match(hash_token(secret), generate_token())
    assert generate_token_id().startswith("tok_") and len(generate_token_id()) <= 32


@pytest.mark.parametrize(
    "bad", ["", "nbt_", "nbt_short", "xyz_" + "a" * 43, "nbt_" + "a" * 42 + "!"]
)
def test_malformed_tokens(bad: str) -> None:
    assert not looks_like_token(bad)


def test_role_order() -> None:
    assert Role.ADMIN.includes(Role.MEMBER) and Role.MEMBER.includes(Role.VIEWER)
    assert not Role.VIEWER.includes(Role.MEMBER) and not Role.MEMBER.includes(Role.ADMIN)


def who(role: Role, tenant: str = "acme") -> Principal:
    return Principal(1, tenant, "tok_1", "t", role)


def test_require_role() -> None:
    require_role(who(Role.MEMBER), Role.VIEWER)
    with pytest.raises(Forbidden):
        require_role(who(Role.VIEWER), Role.MEMBER)


def test_only_operators_manage_other_tenants() -> None:
    require_tenant_admin(who(Role.ADMIN), "acme")
    require_tenant_admin(who(Role.ADMIN, "default"), "acme")
    with pytest.raises(Forbidden):
        require_tenant_admin(who(Role.ADMIN), "globex")
    with pytest.raises(Forbidden):
        require_tenant_admin(who(Role.MEMBER, "default"), "default")


def test_token_usable() -> None:
    now = datetime.now(UTC)
    assert token_usable(None, None, now)
    assert not token_usable(now, None, now)
    assert token_usable(None, now + timedelta(seconds=1), now)
    assert not token_usable(None, now, now)
    naive_past = (now - timedelta(hours=1)).replace(tzinfo=None)  # as SQLite returns it
    assert not token_usable(None, naive_past, now)
    assert as_utc(naive_past).tzinfo is UTC
