"""Health, identity, API tokens and the audit log."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from pydantic import ValidationError

from nimbus.client.base import API, BaseClient
from nimbus.errors import InvalidInput
from nimbus.names import validate_name
from nimbus.security import Role
from nimbus.wire.audit import AuditEvent, AuditLog
from nimbus.wire.console import SignInLink
from nimbus.wire.health import Health
from nimbus.wire.tokens import Identity, NewToken, Token, TokenCreate, TokenList


class TokensMixin(BaseClient):
    """``/healthz``, ``/whoami``, ``/tokens`` and ``/audit``."""

    def health(self) -> Health:
        """``status`` "ok" and the server's ``version``; needs no token."""
        return self._call(Health, "GET", "/healthz", auth=False)

    def whoami(self) -> Identity:
        """The caller's token: its id, name, role and tenant."""
        return self._call(Identity, "GET", f"{API}/whoami")

    def console_link(self) -> str:
        """A one-time link that signs a browser in to the console as this client's token
        (valid once, for two minutes): the server's address plus ``/login/link?code=...``."""
        link = self._call(SignInLink, "POST", f"{API}/console/links")
        return self.url.rstrip("/") + link.path

    def create_token(
        self,
        name: str,
        *,
        role: Role | str = Role.MEMBER,
        tenant: str | None = None,
        expires_at: datetime | None = None,
    ) -> NewToken:
        """Create a token (admin); the returned ``token`` secret is shown only this once.

        ``tenant`` defaults to the caller's; after ``expires_at`` the token answers 401.
        """
        try:
            role = Role(role)
        except ValueError:
            raise InvalidInput(f"invalid role {role!r}: use one of viewer, member, admin") from None
        if tenant is not None:
            validate_name(tenant, "tenant")
        try:
            body = TokenCreate(name=name, role=role, tenant=tenant, expires_at=expires_at)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise InvalidInput(f"invalid token {field}: {first['msg']}") from None
        return self._call(
            NewToken, "POST", f"{API}/tokens", json=body.model_dump(mode="json", exclude_none=True)
        )

    def list_tokens(self) -> list[Token]:
        """The tokens of the caller's tenant (never their secrets)."""
        return self._call(TokenList, "GET", f"{API}/tokens").tokens

    def revoke_token(self, token_id: str) -> Token:
        """Revoke a token; returns it with ``revoked_at`` set."""
        return self._call(Token, "DELETE", f"{API}/tokens/{quote(token_id, safe='')}")

    def audit(self, *, limit: int = 100) -> list[AuditEvent]:
        """The newest ``limit`` audit events of the caller's tenant (admin)."""
        return self._call(AuditLog, "GET", f"{API}/audit", params={"limit": limit}).events
