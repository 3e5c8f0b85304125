"""API tokens (admin) and ``whoami`` (any token)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from nimbus.api.auth import Admin, Viewer
from nimbus.api.state import services_of
from nimbus.wire.tokens import Identity, NewToken, Token, TokenCreate, TokenList

router = APIRouter(tags=["tokens"])


@router.post("/tokens", status_code=201, response_model=NewToken)
def create_token(body: TokenCreate, principal: Admin, request: Request) -> NewToken:
    """Create a token; its secret is in the answer and nowhere else, ever."""
    return services_of(request).tokens.create(
        principal, body.name, body.role, body.tenant, body.expires_at
    )


@router.get("/tokens", response_model=TokenList)
def list_tokens(principal: Admin, request: Request) -> TokenList:
    """The tokens of the caller's tenant, never their secrets."""
    return TokenList(tokens=services_of(request).tokens.list_tokens(principal))


@router.delete("/tokens/{token_id}", response_model=Token)
def revoke_token(token_id: str, principal: Admin, request: Request) -> Token:
    """Revoke a token; revoking it again keeps the first time."""
    return services_of(request).tokens.revoke(principal, token_id)


@router.get("/whoami", response_model=Identity)
def whoami(principal: Viewer) -> Identity:
    """The token this call was made with."""
    return Identity(
        token_id=principal.token_id,
        name=principal.token_name,
        role=principal.role,
        tenant=principal.tenant,
    )
