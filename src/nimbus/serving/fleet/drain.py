"""Graceful drain of a replica on SIGTERM, so a rolling update fails no request.

uvicorn's own shutdown closes idle keep-alive connections at once; a client that sent its next
request on one at that moment sees the connection drop. A draining replica instead:

1. stops accepting (closes its copy of the listening socket: the other replicas, and the
   supervisor, hold theirs, so queued connections go to them);
2. answers every request still arriving on its open connections, with ``Connection: close``
   (the client reconnects, to another replica), and fails readiness;
3. after the drain window, or as soon as no connection is left, shuts down as uvicorn does:
   closes what is idle, finishes in-flight requests, closes the batcher.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import uvicorn

from nimbus.serving import asgi

DEFAULT_DRAIN_SECONDS = 2.0
_READY_PATH = "/v2/health/ready"
_CLOSE = (b"connection", b"close")

ASGIApp = Callable[[asgi.Scope, asgi.Receive, asgi.Send], Awaitable[None]]


class DrainGate:
    """ASGI wrapper: passes everything through until :attr:`draining` is set; from then on,
    readiness answers 503 and every response closes its connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.draining = False

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if not self.draining or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == _READY_PATH:
            await asgi.respond(send, 503, b"", asgi.TEXT, [_CLOSE, (b"retry-after", b"1")])
            return

        async def closing(message: asgi.Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*headers, _CLOSE]}
            await send(message)

        await self.app(scope, receive, closing)


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose shutdown (SIGTERM, SIGINT) drains first; see the module doc."""

    def __init__(
        self, config: uvicorn.Config, gate: DrainGate, drain_seconds: float = DEFAULT_DRAIN_SECONDS
    ) -> None:
        super().__init__(config)
        self.gate = gate
        self.drain_seconds = drain_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        self.gate.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_seconds
        while self.server_state.connections and not self.force_exit and loop.time() < deadline:
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)
