"""The job API relay of a Ray node: how a sandboxed attempt with no network reaches the
control plane.

A sandboxed attempt on a Ray node runs in a network namespace of its own (only its
loopback), as a local one does. Locally the control plane itself listens on a unix socket
bound into every sandbox and answers only the job API there
(:class:`~nimbus.api.job_socket.JobApiOnly`); on a Ray node the control plane is another
machine, reached over TCP. The node's agent keeps one :class:`JobApiRelay`: for each
control plane URL it is asked for (:meth:`JobApiRelay.socket_for`), an HTTP server on a
unix socket in its directory (bound read-only into each sandbox at
:data:`~nimbus.jobs.sandbox.JOB_API_DIR`) that passes job API requests
(``/api/v1/job-api/...``) on to that URL, streamed both ways, and answers anything else
with a 404, as the local socket does. The attempt reaches that one address, and only its
job API: not the rest of the API (with a token found in its inputs), not Ray's daemons,
not the LAN.

The URLs come from the control plane (the attempt's launch), never from the job. The
control plane authenticates each request (the job token) as it does any other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn

from nimbus.jobs.sandbox import JOB_API_DIR
from nimbus.system import bind_unix

log = logging.getLogger(__name__)
START_SECONDS = 10.0
JOB_API_PREFIX = "/api/v1/job-api/"  # the only paths relayed (nimbus.api.app's prefix)
# Hop-by-hop headers (RFC 9110 7.6.1) and Host: each side's own.
_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
)

Scope = dict[str, Any]
Message = dict[str, Any]


def upstream_of(url: str) -> str:
    """The control plane's base URL, checked: ``http(s)://HOST[:PORT]``; ValueError else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the job API relay needs an http(s)://HOST[:PORT] URL, not {url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def socket_name(url: str) -> str:
    """The relay socket's file name for ``url`` (one per control plane)."""
    return f"job-api-{hashlib.sha256(upstream_of(url).encode()).hexdigest()[:16]}.sock"


def sandbox_url(url: str) -> str:
    """The ``NIMBUS_URL`` a sandboxed attempt is given for the control plane at ``url``."""
    return f"unix:{JOB_API_DIR}/{socket_name(url)}"


def is_job_api(path: str) -> bool:
    """Whether ``path`` (decoded) is the job API's, with no dot segment that would lead
    out of it once the URL is normalized."""
    return path.startswith(JOB_API_PREFIX) and not any(
        segment in (".", "..") for segment in path.split("/")
    )


def _reply(status: int, message: str) -> tuple[Message, Message]:
    body = json.dumps(
        {
            "error": {
                "code": "not_found" if status == 404 else "unavailable",
                "message": message,
            }
        }
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


class JobApiProxy:
    """The ASGI app of one relay socket: job API requests on to ``upstream``, else 404."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] != "http":  # a websocket: refused
            await send({"type": "websocket.close", "code": 1008})
        elif not is_job_api(str(scope["path"])):
            for message in _reply(404, "only the job API is relayed to the control plane"):
                await send(message)
        else:
            await self._relay(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # No read timeout of its own: the job's client keeps its own deadlines.
                timeout = httpx.Timeout(None, connect=START_SECONDS)
                self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _relay(self, scope: Scope, receive: Any, send: Any) -> None:
        assert self.client is not None

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] != "http.request":  # the job went away
                    return
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        target = scope.get("raw_path") or str(scope["path"]).encode()
        query = scope.get("query_string") or b""
        url = (
            self.upstream
            + target.decode("latin-1")
            + (f"?{query.decode('latin-1')}" if query else "")
        )
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP]
        # A body goes on only where the job sent one: a GET relayed with an empty chunked
        # body leaves its terminator on a kept-alive connection for a server that does not
        # read bodies of GETs, and the next request on it fails.
        sent = any(
            k.lower() in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"]
        )
        request = self.client.build_request(
            scope["method"], url, headers=headers, content=body() if sent else None
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("job API relay: %s unreachable: %s", self.upstream, exc)
            for message in _reply(502, f"the control plane is unreachable: {type(exc).__name__}"):
                await send(message)
            return
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP]
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": out,
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


class JobApiRelay:
    """The relay sockets of a node, in ``directory``: one HTTP server (uvicorn, in a daemon
    thread of its own) per control plane. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._servers: dict[str, tuple[uvicorn.Server, threading.Thread]] = {}
        self._lock = threading.Lock()

    def socket_for(self, url: str) -> str:
        """The sandbox's ``NIMBUS_URL`` for ``url``, its relay serving from now on."""
        name = socket_name(url)
        with self._lock:
            if name not in self._servers:
                self._servers[name] = self._start(name, upstream_of(url))
        return sandbox_url(url)

    def _start(self, name: str, upstream: str) -> tuple[uvicorn.Server, threading.Thread]:
        sock = bind_unix(self.directory / name)
        config = uvicorn.Config(
            JobApiProxy(upstream),
            lifespan="on",
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"relay-{name}",
            daemon=True,
        )
        thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise OSError(f"the job API relay for {upstream} did not start")
            time.sleep(0.01)
        return server, thread

    def close(self) -> None:
        """Stop every relay (requests in flight end), remove the sockets."""
        with self._lock:
            for server, _ in self._servers.values():
                server.should_exit = True
            for name, (_, thread) in self._servers.items():
                thread.join(START_SECONDS)
                (self.directory / name).unlink(missing_ok=True)
            self._servers.clear()
