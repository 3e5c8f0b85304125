"""Pure-ASGI middleware that writes every mutating request to the audit log.

The event is written when the response starts and before its first byte leaves, so a
client that has seen a response can rely on finding the event; refused requests (401,
403, 4xx) and failures (500) are recorded like successful ones. Refusals of callers that
could not be identified are rate-limited per client address
(:meth:`AuditService.record_refused`): past the first few of a minute, they are counted in
one summary row, brought up to date by the audit sweep.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nimbus.api.context import SCOPE_KEY, AuditContext
from nimbus.services.audit import AuditService

log = logging.getLogger(__name__)
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def resource_of(scope: Scope) -> str:
    """The request path as sent (percent-encoded), safe to store in any database."""
    raw = scope.get("raw_path")
    path = raw.decode("ascii", "backslashreplace") if raw else str(scope.get("path", ""))
    return path.replace("\x00", "\\x00")[:512]


class AuditMiddleware:
    def __init__(self, app: ASGIApp, audit: AuditService) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING:
            await self.app(scope, receive, send)
            return
        ctx = AuditContext()
        scope[SCOPE_KEY] = ctx
        recorded = False

        async def send_and_record(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                await self._record(scope, ctx, int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except BaseException:
            if not recorded:
                recorded = True
                await self._record(scope, ctx, 500)
            raise

    async def _record(self, scope: Scope, ctx: AuditContext, status: int) -> None:
        detail: dict[str, Any] = {}
        client = scope.get("client")
        if client:
            detail["client"] = client[0]
        query = scope.get("query_string", b"")
        if query:
            detail["query"] = query.decode("ascii", "backslashreplace")[:500]
        if ctx.error:
            detail["error"] = ctx.error
        try:
            if ctx.principal is None and 400 <= status < 500:
                await run_in_threadpool(
                    self.audit.record_refused,
                    detail.get("client"),
                    scope["method"],
                    resource_of(scope),
                    status,
                    detail,
                )
                return
            await run_in_threadpool(
                self.audit.record,
                ctx.principal,
                scope["method"],
                resource_of(scope),
                status,
                detail,
            )
        except Exception:
            log.exception(
                "could not write the audit event for %s %s", scope["method"], resource_of(scope)
            )
