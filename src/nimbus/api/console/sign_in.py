"""Signing in and out: a token traded for a session cookie, and one-time links (``nimbus ui``).

The sign-in form is protected from login CSRF (a foreign page signing a browser in as the
attacker) by a double-submit value: a random cookie set with the form, echoed in the form.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response

from nimbus.api.console.web import (
    COOKIE,
    ConsoleRoute,
    Post,
    page,
    redirect,
    safe_next,
    set_session_cookie,
)
from nimbus.api.state import services_of
from nimbus.errors import Forbidden, Unauthorized

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

FORM_COOKIE = "nimbus_signin"


def _form(request: Request, target: str, message: str = "", status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(24)
    context = {"next": safe_next(target), "nonce": nonce, "message": message}
    response = page(request, None, "login.html", context, status=status)
    response.set_cookie(
        FORM_COOKIE,
        nonce,
        max_age=3600,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/login")
def sign_in_form(request: Request, next: str = "/") -> Response:
    return _form(request, next)


@router.post("/login")
def sign_in(
    request: Request,
    token: Annotated[str, Form()] = "",
    nonce: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    expected = request.cookies.get(FORM_COOKIE, "")
    if not expected or not hmac.compare_digest(expected, nonce):
        raise Forbidden("refused: the sign-in form is stale or came from another site (reload)")
    try:
        signed = services_of(request).console.sign_in(token)
    except Unauthorized as exc:
        return _form(request, next, f"Sign-in failed: {exc.message}", status=401)
    response = redirect(safe_next(next))
    set_session_cookie(response, request, signed)
    response.delete_cookie(FORM_COOKIE, path="/login")
    return response


@router.get("/login/link")
def sign_in_link(request: Request, code: str = "") -> Response:
    """A one-time link from ``nimbus ui``: signs the browser in once, then never again."""
    try:
        signed = services_of(request).console.redeem_link(code)
    except Unauthorized as exc:
        return _form(request, "/", f"Sign-in failed: {exc.message}", status=401)
    response = redirect("/")
    set_session_cookie(response, request, signed)
    return response


@router.post("/logout")
def sign_out(request: Request, signed: Post) -> Response:
    services_of(request).console.sign_out(signed.secret)
    response = redirect("/login")
    response.delete_cookie(COOKIE, path="/")
    return response
