"""The inference routes' fast path: a request answered by the protocol itself, without ASGI.

Under uvicorn every request costs an ASGI cycle: a task, a coroutine per layer, ``receive``
and ``send`` messages as dicts, and ``send`` re-checking each response header. For an inference
request that is as much CPU as the inference itself (a small model's share of a batch), so
the replica's protocol hands the requests a :class:`FastHandler` accepts (the model's infer
and predict routes, with a small body that is neither compressed nor a form) straight to it,
once their body is in, and writes the reply it gets back in one piece. Every other request,
and every request while the replica drains, goes through the ASGI application as before.

What a client sees is the same either way (status, headers, body, ``Connection: close`` when
the request asked for it or the server is shutting down): uvicorn's own connection state
(its request cycle, pipelining queue, keep-alive timer) is kept up to date exactly as its
``send`` would, and the read deadlines of :mod:`nimbus.serving.timeouts` apply unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from nimbus.serving import asgi
from nimbus.serving.timeouts import DEFAULT_READ_TIMEOUTS, ReadTimeouts, TimeoutHttpToolsProtocol

Reply = Callable[[int, bytes, bytes, asgi.Headers], None]


class FastHandler(Protocol):
    """What the protocol needs of an application to answer some requests itself."""

    def accepts(self, method: str, path: str, headers: asgi.Headers) -> bool:
        """Whether this request (its body not read yet) is one :meth:`handle` answers."""

    def handle(self, path: str, headers: asgi.Headers, body: bytes, reply: Reply) -> None:
        """Answer a request :meth:`accepts` took, its whole body read: call ``reply`` (status,
        body, content type, further headers) exactly once, now or later, on the event loop."""


def _always() -> bool:
    return True


class FastPathProtocol(TimeoutHttpToolsProtocol):
    """:class:`TimeoutHttpToolsProtocol` answering the requests ``handler`` accepts itself
    while ``is_open()`` (false once the replica drains). Build it with :func:`fast_protocol`."""

    handler: FastHandler | None = None
    is_open: Callable[[], bool] = staticmethod(_always)

    # The fast request whose body is still arriving (at most one: requests are parsed in order).
    _waiting: RequestResponseCycle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._waiting = None
        super().connection_made(transport)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:  # type: ignore[no-untyped-def]
        handler = self.handler
        scope = cycle.scope
        if (
            handler is None
            or cycle.waiting_for_100_continue
            or not self.is_open()
            or not handler.accepts(
                scope["method"], scope["path"], cast(asgi.Headers, scope["headers"])
            )
        ):
            super()._start_asgi_task(cycle, app)
            return
        if cycle.more_body:
            self._waiting = cycle  # dispatched when its body is complete
        else:
            self._dispatch(cycle)  # a pipelined request, read in full while it queued

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self._waiting
        if cycle is not None and cycle is self.cycle and not cycle.more_body:
            self._waiting = None
            self._dispatch(cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting = None
        super().connection_lost(exc)

    def _dispatch(self, cycle: RequestResponseCycle) -> None:
        assert self.handler is not None
        scope = cycle.scope
        body = bytes(cycle.body)
        cycle.body = bytearray()

        def reply(status: int, body: bytes, content_type: bytes, extra: asgi.Headers) -> None:
            self._reply(cycle, status, body, content_type, extra)

        self.handler.handle(scope["path"], cast(asgi.Headers, scope["headers"]), body, reply)

    def _reply(
        self,
        cycle: RequestResponseCycle,
        status: int,
        body: bytes,
        content_type: bytes,
        extra: asgi.Headers,
    ) -> None:
        """Write a whole response as uvicorn's ``send`` would, and finish the cycle. It goes
        to the transport itself, in one write (the cycle's coalescing writer holds nothing:
        the response before this one is complete)."""
        if cycle.disconnected or cycle.response_complete:
            return
        cycle.response_started = True
        cycle.waiting_for_100_continue = False
        parts = [STATUS_LINE[status]]
        for name, value in cycle.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts += [b"content-type: ", content_type, b"\r\ncontent-length: %d\r\n" % len(body)]
        for name, value in extra:
            parts += [name, b": ", value, b"\r\n"]
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", body]
        self.transport.write(b"".join(parts))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()


def fast_protocol(
    handler: FastHandler,
    timeouts: ReadTimeouts = DEFAULT_READ_TIMEOUTS,
    is_open: Callable[[], bool] = _always,
) -> type[FastPathProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``: ``timeouts`` as
    :func:`nimbus.serving.timeouts.timeout_protocol`, and ``handler``'s requests answered
    directly while ``is_open()``."""
    return type(
        "FastPathProtocol",
        (FastPathProtocol,),
        {"timeouts": timeouts, "handler": handler, "is_open": staticmethod(is_open)},
    )
