"""Authentication and authorisation dependencies for routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from nimbus.api.context import audit_context
from nimbus.api.state import services_of
from nimbus.errors import Unauthorized
from nimbus.security import Principal, Role, require_role
from nimbus.services.tokens import TokenRejected


def bearer_secret(header: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer <secret>`` header, or None if absent."""
    if header is None or not header.strip():
        return None
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("invalid Authorization header: use 'Bearer <token>'")
    return secret.strip()


def authenticate(request: Request) -> Principal:
    """The caller; 401 when the token is missing, unknown, revoked or expired."""
    ctx = audit_context(request.scope)
    try:
        principal = services_of(request).tokens.authenticate(
            bearer_secret(request.headers.get("authorization"))
        )
    except TokenRejected as exc:
        if ctx is not None:
            ctx.principal = exc.principal
        raise
    if ctx is not None:
        ctx.principal = principal
    return principal


def _needs(role: Role) -> Callable[[Principal], Principal]:
    def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        require_role(principal, role)
        return principal

    check.__name__ = f"require_{role}"
    return check


Viewer = Annotated[Principal, Depends(authenticate)]
Member = Annotated[Principal, Depends(_needs(Role.MEMBER))]
Admin = Annotated[Principal, Depends(_needs(Role.ADMIN))]
