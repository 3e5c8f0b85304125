"""API tokens and identity: ``/tokens`` and ``/whoami``."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from nimbus.security import Role
from nimbus.wire.base import Request, Response, Timestamp


class TokenCreate(Request):
    """``POST /tokens``: ``tenant`` defaults to the caller's, ``expires_at`` to never."""

    name: str = Field(min_length=1, max_length=128)
    role: Role = Role.MEMBER
    tenant: str | None = None
    expires_at: datetime | None = None


class Token(Response):
    """A token as listed: never its secret nor its hash."""

    id: str
    name: str
    role: Role
    tenant: str
    created_at: Timestamp
    expires_at: Timestamp | None
    revoked_at: Timestamp | None


class NewToken(Token):
    """The answer to ``POST /tokens``: the only time the secret (``token``) is shown."""

    token: str


class TokenList(Response):
    """``GET /tokens``: the tokens of the caller's tenant."""

    tokens: list[Token]


class Identity(Response):
    """``GET /whoami``: the token a call was made with."""

    token_id: str
    name: str
    role: Role
    tenant: str
