"""API tokens (admin) and ``whoami`` (any token)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from nimbus.api.auth import Admin, Viewer
from nimbus.api.state import services_of
from nimbus.security import Role

router = APIRouter(tags=["tokens"])


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role = Role.MEMBER
    tenant: str | None = None
    expires_at: datetime | None = None


@router.post("/tokens", status_code=201)
def create_token(body: TokenCreate, principal: Admin, request: Request) -> dict[str, Any]:
    """Create a token; its secret is in the answer and nowhere else, ever."""
    return services_of(request).tokens.create(
        principal, body.name, body.role, body.tenant, body.expires_at
    )


@router.get("/tokens")
def list_tokens(principal: Admin, request: Request) -> dict[str, Any]:
    return {"tokens": services_of(request).tokens.list_tokens(principal)}


@router.delete("/tokens/{token_id}")
def revoke_token(token_id: str, principal: Admin, request: Request) -> dict[str, Any]:
    return services_of(request).tokens.revoke(principal, token_id)


@router.get("/whoami")
def whoami(principal: Viewer) -> dict[str, Any]:
    return {
        "token_id": principal.token_id,
        "name": principal.token_name,
        "role": str(principal.role),
        "tenant": principal.tenant,
    }
