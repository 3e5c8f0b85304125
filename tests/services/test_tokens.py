"""TokenService: authentication, creation across tenants, revocation, bootstrap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nimbus.db.engine import Database
from nimbus.errors import Forbidden, InvalidInput, NotFound
from nimbus.security import Role, generate_token
from nimbus.services.tokens import TokenRejected, TokenService
from nimbus.wire.base import dump

TOKEN_FIELDS = {"id", "name", "role", "tenant", "created_at", "expires_at", "revoked_at"}


def test_bootstrap_admin_once(db: Database) -> None:
    service = TokenService(db)
    secret = service.ensure_bootstrap_admin()
    assert secret is not None
    assert service.ensure_bootstrap_admin() is None
    admin = service.authenticate(secret)
    assert (admin.tenant, admin.role, admin.is_operator) == ("default", Role.ADMIN, True)
    service.revoke(admin, admin.token_id)
    assert service.ensure_bootstrap_admin() is not None  # a locked-out operator gets a new one


@pytest.mark.parametrize(
    "secret",
    [None, "", "garbage", generate_token()],
    ids=["none", "empty", "garbage", "unknown-well-formed"],  # stable: xdist compares ids
)
def test_unknown_secrets_are_rejected(db: Database, secret: str | None) -> None:
    with pytest.raises(TokenRejected) as err:
        TokenService(db).authenticate(secret)
    assert err.value.status == 401 and err.value.principal is None


def test_create_list_revoke(db: Database) -> None:
    service = TokenService(db)
    operator = service.authenticate(service.ensure_bootstrap_admin() or "")
    created = service.create(operator, "ci", Role.ADMIN, "acme")
    assert created.tenant == "acme" and created.token.startswith("nbt_")
    acme_admin = service.authenticate(created.token)
    member = service.create(acme_admin, "member", Role.MEMBER)
    assert member.tenant == "acme"
    listed = service.list_tokens(acme_admin)
    assert [t.name for t in listed] == ["ci", "member"]
    assert all(set(dump(t)) == TOKEN_FIELDS for t in listed)  # no secret, no hash
    with pytest.raises(Forbidden):
        service.create(acme_admin, "x", Role.VIEWER, "globex")
    with pytest.raises(NotFound):  # another tenant's token
        service.revoke(acme_admin, operator.token_id)
    with pytest.raises(Forbidden):
        service.list_tokens(service.authenticate(member.token))
    revoked = service.revoke(acme_admin, member.id)
    assert revoked.revoked_at is not None
    with pytest.raises(TokenRejected) as err:
        service.authenticate(member.token)
    assert err.value.principal is not None and err.value.principal.token_id == member.id
    assert service.revoke(operator, member.id).revoked_at == revoked.revoked_at


@pytest.mark.parametrize(
    ("name", "tenant"), [("", None), ("x" * 129, None), ("bad\nname", None), ("ok", "../x")]
)
def test_invalid_token_requests(db: Database, name: str, tenant: str | None) -> None:
    service = TokenService(db)
    operator = service.authenticate(service.ensure_bootstrap_admin() or "")
    with pytest.raises(InvalidInput):
        service.create(operator, name, Role.VIEWER, tenant)


def test_expired_tokens_are_rejected(db: Database) -> None:
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    service = TokenService(db, clock=lambda: now[0])
    operator = service.authenticate(service.ensure_bootstrap_admin() or "")
    created = service.create(operator, "short", Role.VIEWER, expires_at=now[0] + timedelta(hours=1))
    assert dump(created)["expires_at"] == "2030-01-01T01:00:00Z"
    service.authenticate(created.token)
    now[0] += timedelta(hours=2)
    with pytest.raises(TokenRejected, match="expired"):
        service.authenticate(created.token)
    with pytest.raises(InvalidInput):
        service.create(operator, "past", Role.VIEWER, expires_at=now[0] - timedelta(seconds=1))
