"""Health, identity, API tokens and the audit log."""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from urllib.parse import quote

from nimbus.client.base import API, BaseClient
from nimbus.errors import InvalidInput
from nimbus.names import validate_name


class Role(StrEnum):
    """Token roles, weakest first."""

    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"


class TokensMixin(BaseClient):
    """``/healthz``, ``/whoami``, ``/tokens`` and ``/audit``."""

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "version": ...}``; needs no token."""
        return dict(self._json("GET", "/healthz", auth=False))

    def whoami(self) -> dict[str, Any]:
        """The caller's token: ``{"token_id", "name", "role", "tenant"}``."""
        return dict(self._json("GET", f"{API}/whoami"))

    def create_token(
        self, name: str, role: Role | str = Role.MEMBER, tenant: str | None = None
    ) -> dict[str, Any]:
        """Create a token (admin); the returned ``token`` secret is shown only this once."""
        try:
            role = Role(role)
        except ValueError:
            raise InvalidInput(f"invalid role {role!r}: use one of viewer, member, admin") from None
        body: dict[str, Any] = {"name": name, "role": str(role)}
        if tenant is not None:
            body["tenant"] = validate_name(tenant, "tenant")
        return dict(self._json("POST", f"{API}/tokens", json=body))

    def list_tokens(self) -> list[dict[str, Any]]:
        """The tokens of the caller's tenant (never their secrets)."""
        return list(self._json("GET", f"{API}/tokens")["tokens"])

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke a token; returns it with ``revoked_at`` set."""
        return dict(self._json("DELETE", f"{API}/tokens/{quote(token_id, safe='')}"))

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit events of the caller's tenant (admin)."""
        return list(self._json("GET", f"{API}/audit", params={"limit": limit})["events"])
