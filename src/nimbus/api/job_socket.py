"""What the control plane serves on its job API socket: the job API, nothing else.

Sandboxed jobs have no network; they reach the control plane through a unix socket bound
into their sandbox (:mod:`nimbus.jobs.sandbox`). The server listens on it with the same app
as on its TCP port (:func:`nimbus.server.run`), wrapped in :class:`JobApiOnly`: a request
that came in over a unix socket (ASGI gives it a ``server`` of ``(path, None)``), or over a
connection whose address is unknown, gets 404
unless it is for the job API, so a job holding some other token found in its inputs still
cannot use the rest of the API from inside its sandbox.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from nimbus.api.app import JOB_API_PREFIX

_NOT_HERE = json.dumps(
    {"error": {"code": "not_found", "message": "only the job API is served on this socket"}}
).encode()


def over_unix_socket(scope: Scope) -> bool:
    """Whether the connection of ``scope`` came in over a unix socket; so is one whose
    server address is unknown (refused rather than served whole)."""
    server = scope.get("server")
    return not (server and isinstance(server[1], int))


class JobApiOnly:
    """Passes on every request over TCP and, over a unix socket, only job API requests."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or not over_unix_socket(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(JOB_API_PREFIX):
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # a websocket: refuse the handshake
            await send({"type": "websocket.close", "code": 1008})
            return
        length = str(len(_NOT_HERE)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": _NOT_HERE})
