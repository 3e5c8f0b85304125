"""The admins' pages: Tokens (list, create, revoke; a new token's secret is shown once, on
the answer to the post that made it, and never again) and Audit (the tenant's log, newest
first, paged in SQL and filtered by action or status)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response

from nimbus.api.console.web import Browser, ConsoleRoute, Post, page, redirect
from nimbus.api.state import services_of
from nimbus.errors import InvalidInput, NotFound
from nimbus.security import Role, require_role
from nimbus.services.console_sessions import SignedIn
from nimbus.wire.tokens import Token

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
MAX_EXPIRY_DAYS = 3650
AUDIT_PAGE = 50
ACTIONS = ("POST", "PUT", "PATCH", "DELETE")


def _tokens(request: Request, signed: SignedIn) -> list[Token]:
    return services_of(request).tokens.list_tokens(signed.principal)  # admins only (403)


@router.get("/tokens")
def tokens(request: Request, signed: Browser) -> Response:
    context = {"tokens": _tokens(request, signed), "roles": [r.value for r in Role]}
    return page(request, signed, "tokens.html", context, section="tokens")


@router.post("/tokens")
def create_token(
    request: Request,
    signed: Post,
    name: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = "member",
    expires_days: Annotated[str, Form()] = "",
) -> Response:
    """The answer shows the secret; it is not kept anywhere the console could show again."""
    services = services_of(request)
    require_role(signed.principal, Role.ADMIN)
    try:
        chosen = Role(role)
    except ValueError:
        raise InvalidInput(f"invalid role {role[:40]!r}: use viewer, member or admin") from None
    expires_at = None
    if expires_days.strip():
        try:
            days = int(expires_days)
        except ValueError:
            days = 0
        if not 1 <= days <= MAX_EXPIRY_DAYS:
            raise InvalidInput(f"invalid expiry: a whole number of days, 1-{MAX_EXPIRY_DAYS}")
        expires_at = services.tokens.clock() + timedelta(days=days)
    made = services.tokens.create(signed.principal, name, chosen, expires_at=expires_at)
    return page(request, signed, "token_created.html", {"t": made}, section="tokens")


def _token(request: Request, signed: SignedIn, token_id: str) -> Token:
    for token in _tokens(request, signed):
        if token.id == token_id:
            return token
    raise NotFound(f"token {token_id[:40]!r} not found")


@router.get("/tokens/{token_id}/revoke")
def confirm_revoke(request: Request, signed: Browser, token_id: str) -> Response:
    context = {"t": _token(request, signed, token_id)}
    return page(request, signed, "token_revoke.html", context, section="tokens")


@router.post("/tokens/{token_id}/revoke")
def revoke(request: Request, signed: Post, token_id: str) -> Response:
    services_of(request).tokens.revoke(signed.principal, token_id)
    return redirect("/tokens")


@router.get("/audit")
def audit(
    request: Request,
    signed: Browser,
    before: Annotated[int | None, Query(ge=1)] = None,
    action: Annotated[str, Query(max_length=16)] = "",
    status: Annotated[str, Query(max_length=3)] = "",
) -> Response:
    chosen_action = action.upper() or None
    if chosen_action is not None and chosen_action not in ACTIONS:
        raise InvalidInput(f"invalid action {action!r}: use one of {', '.join(ACTIONS)}")
    chosen_status = None
    if status:
        if not status.isdigit() or not 100 <= int(status) <= 599:
            raise InvalidInput(f"invalid status {status!r}: an HTTP status, 100-599")
        chosen_status = int(status)
    events = services_of(request).audit.list_events(
        signed.principal,
        AUDIT_PAGE + 1,
        before=before,
        action=chosen_action,
        status=chosen_status,
    )
    more = len(events) > AUDIT_PAGE
    events = events[:AUDIT_PAGE]
    context = {
        "events": events,
        "next_before": events[-1].id if more and events else None,
        "paged": before is not None,
        "action": chosen_action or "",
        "status": status,
        "actions": ACTIONS,
    }
    return page(request, signed, "audit.html", context, section="audit")
