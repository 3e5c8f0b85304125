"""What every console page shares: the session cookie and the sign-in check, CSRF checks on
posts, the templates, security headers, and errors as HTML pages.

Pages are thin, like the API's routes: they call the same services with the same principal,
so RBAC and tenant isolation are the API's own (a viewer's post is refused by the service
with 403, another tenant's object is a 404).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from nimbus import __version__
from nimbus.api.context import audit_context
from nimbus.api.errors import describe_validation_error
from nimbus.api.state import services_of
from nimbus.errors import Forbidden, NimbusError, Unauthorized
from nimbus.security import Role, as_utc
from nimbus.services.console_sessions import SESSION_TTL, SignedIn, csrf_matches
from nimbus.services.tokens import TokenRejected

HERE = Path(__file__).parent
COOKIE = "nimbus_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.globals["version"] = __version__


def _when(moment: datetime | None) -> str:
    """A timestamp as people read it, in UTC to the second."""
    return "" if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def _num(value: Any, digits: int = 4) -> str:
    """A metric for a table: integers as they are, floats to ``digits`` significant digits."""
    if value is None:
        return "\u2013"  # an en dash
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


TEMPLATES.env.filters["when"] = _when
TEMPLATES.env.filters["num"] = _num

# Scripts only from the console's own files (no inline script, no eval: htmx runs with
# allowEval off); data for charts travels in JSON blocks that never execute. Styles may be
# set inline (heatmap cells, bars); images may be data:/blob: URLs (sample grids, previews).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """No usable session: a page answers with the sign-in page's address."""


def safe_next(target: str | None) -> str:
    """A local path to go back to after signing in: never another site (``//host``,
    ``https://...``, a backslash trick), else the overview."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(c in target for c in "\r\n\\"):
        return "/"
    return target


def sign_in_address(request: Request) -> str:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/login" if here == "/" else f"/login?next={quote(here, safe='')}"


def set_session_cookie(response: Response, request: Request, signed: SignedIn) -> None:
    response.set_cookie(
        COOKIE,
        signed.secret,
        max_age=int(SESSION_TTL.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def signed_in(request: Request) -> SignedIn:
    """The browser's session (every page depends on it); without one the page sends the
    browser to the sign-in page."""
    ctx = audit_context(request.scope)
    try:
        signed = services_of(request).console.authenticate(request.cookies.get(COOKIE))
    except TokenRejected as exc:
        if ctx is not None:
            ctx.principal = exc.principal
        raise SignInRequired from None
    except Unauthorized:
        raise SignInRequired from None
    if ctx is not None:
        ctx.principal = signed.principal
    return signed


async def posted(request: Request, signed: Annotated[SignedIn, Depends(signed_in)]) -> SignedIn:
    """A signed-in browser's post: same origin, and the session's CSRF token in the form's
    ``csrf`` field or the ``X-CSRF-Token`` header (scripts and htmx)."""
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            raise Forbidden("refused: the request comes from another site")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not csrf_matches(signed.secret, sent):
        raise Forbidden("refused: the form's CSRF token is missing or wrong (reload the page)")
    return signed


Browser = Annotated[SignedIn, Depends(signed_in)]
Post = Annotated[SignedIn, Depends(posted)]


def page(
    request: Request,
    signed: SignedIn | None,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    section: str = "",
) -> HTMLResponse:
    """A page (or, for htmx, a fragment) rendered with what every template may use: who is
    signed in, what they may do, and the CSRF token for forms."""
    values: dict[str, Any] = {"section": section, "me": None, "csrf": "", "can_write": False}
    if signed is not None:
        role = signed.principal.role
        values.update(
            me=signed.principal,
            csrf=signed.csrf,
            can_write=role.includes(Role.MEMBER),
            is_admin=role.includes(Role.ADMIN),
        )
    values.update(context or {})
    response = TEMPLATES.TemplateResponse(request, template, values, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(target: str) -> RedirectResponse:
    """After a successful post: see the result (303, so a reload does not post again)."""
    response = RedirectResponse(target, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def _error_page(request: Request, status: int, code: str, message: str) -> Response:
    if (ctx := audit_context(request.scope)) is not None:
        ctx.error = code
    signed = None
    with contextlib.suppress(NimbusError):
        signed = services_of(request).console.authenticate(request.cookies.get(COOKIE))
    if request.headers.get("hx-request"):
        response: Response = HTMLResponse(
            TEMPLATES.get_template("error_fragment.html").render(message=message),
            status_code=status,
        )
        response.headers.update(SECURITY_HEADERS)
        return response
    context = {"status": status, "code": code, "message": message}
    return page(request, signed, "error.html", context, status=status)


class ConsoleRoute(APIRoute):
    """A console route: failures become HTML pages with the API's status and message (a
    viewer's refused post is still a 403), and a missing session sends a browser that asked
    for a page to the sign-in page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                response = await handle(request)
            except SignInRequired:
                if request.method in ("GET", "HEAD"):
                    return redirect(sign_in_address(request))
                return _error_page(request, 401, "unauthorized", "not signed in: sign in again")
            except NimbusError as exc:
                return _error_page(request, exc.status, exc.code, exc.message)
            except RequestValidationError as exc:
                message = describe_validation_error(exc.errors())
                return _error_page(request, 400, "invalid_input", message)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return handler
