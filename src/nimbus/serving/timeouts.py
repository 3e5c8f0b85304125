"""Read timeouts for uvicorn's httptools protocol: slow clients (slowloris) cannot hold sockets.

uvicorn times out only an idle keep-alive connection, and its timer stops at the first byte of
the next request: a client that sends a header byte every few seconds, or declares a large body
and trickles it, holds its connection (and a file descriptor) for as long as it likes. This
protocol adds, per connection:

- a **header deadline**: the request line and headers must be complete within
  ``header_timeout`` seconds of the connection opening (or of the previous response ending),
  and may not exceed ``max_header_bytes``;
- a **body deadline**: the body must arrive within ``body_timeout`` seconds of the headers,
  extended by one second per ``min_body_rate`` bytes received (as Apache's mod_reqtimeout
  does), so a large upload at a reasonable rate always finishes. Time the application spends
  not reading (uvicorn pauses the socket) does not count against the client.

A request that misses a deadline gets ``408 Request Timeout`` (``431`` for oversized headers)
when no response has started, and its connection is closed. Build the class with
:func:`timeout_protocol` and pass it as ``uvicorn.Config(http=...)``.

The protocol also sends each response in one write: uvicorn writes the head and the body
separately, and on a loopback or LAN connection each ``send`` costs as much as the rest of a
small request's HTTP handling. The head is held (see :class:`CoalescingWriter`) until the body
follows, at the latest until the event loop's next step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


@dataclass(frozen=True)
class ReadTimeouts:
    """How long a client may take to send a request; see the module doc."""

    header_timeout: float = 10.0
    body_timeout: float = 20.0
    min_body_rate: float = 64 * 1024.0
    max_header_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.header_timeout <= 0 or self.body_timeout <= 0 or self.min_body_rate <= 0:
            raise ValueError("read timeouts and the minimum body rate must be positive")
        if self.max_header_bytes < 1024:
            raise ValueError("max_header_bytes must be at least 1024")


DEFAULT_READ_TIMEOUTS = ReadTimeouts()


class CoalescingWriter:
    """Stands in for a connection's transport in uvicorn's request cycles: the first write of
    a response (its head) is held and goes out with the next write (its body), in one send.

    Order is never changed, only a held head delayed: if no other write follows it in the
    same step of the event loop, a callback then writes it alone. Everything but ``write``
    and ``close`` is the transport's own.
    """

    __slots__ = ("_held", "_hold_next", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._hold_next = False

    def expect_head(self) -> None:
        """A new request cycle begins: hold its first write."""
        self._hold_next = True

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif self._hold_next:
            self._hold_next = False
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write what is held, if anything (and the connection is still open)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TimeoutHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines (see the module doc)."""

    timeouts: ReadTimeouts = DEFAULT_READ_TIMEOUTS

    # Instance state is set in connection_made: uvicorn builds protocols through keyword
    # arguments that this class passes on untouched.
    _deadline: float
    _timer: asyncio.TimerHandle | None
    _phase: str  # "headers", "body" or "" (a request is being answered, or nothing is due)
    _header_bytes: int
    _writer: CoalescingWriter

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = None
        self._writer = CoalescingWriter(transport, self.loop)
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        counting = self._phase == "headers"
        super().data_received(data)
        if counting and self._phase == "headers" and not self.transport.is_closing():
            # Still inside the headers after this chunk: they count against the cap. (A chunk
            # that completes them may carry body bytes too, which do not.)
            self._header_bytes += len(data)
            if self._header_bytes > self.timeouts.max_header_bytes:
                self._refuse(431, b"Request Header Fields Too Large")

    def on_headers_complete(self) -> None:
        # The next request's headers may already be buffered (pipelining) and are counted
        # from here on, so the size cap applies to each request's own headers.
        self._header_bytes = 0
        self._phase = "body"
        self._deadline = self.loop.time() + self.timeouts.body_timeout
        self._arm()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            # The cycle has not run yet (its task is only scheduled): its writes go through
            # the writer from the first.
            cycle.transport = self._writer  # type: ignore[assignment]
            self._writer.expect_head()

    def on_body(self, body: bytes) -> None:
        self._deadline += len(body) / self.timeouts.min_body_rate
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = ""  # the timer, left armed, finds nothing due and lapses
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._expect_headers()

    def _expect_headers(self) -> None:
        self._phase = "headers"
        self._header_bytes = 0
        self._deadline = self.loop.time() + self.timeouts.header_timeout
        self._arm()

    def _arm(self) -> None:
        # One timer per connection, not one per request: a timer due before the deadline is
        # kept, and when it fires it re-arms for the deadline as it then stands.
        if self._timer is not None and self._timer.when() <= self._deadline:
            return
        self._cancel()
        self._timer = self.loop.call_at(self._deadline, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self._phase or self.transport.is_closing():
            return
        paused = self._phase == "body" and self.flow is not None and self.flow.read_paused
        if paused or self.loop.time() < self._deadline:
            # The application is not reading (the client is not to blame), or bytes arrived
            # and moved the deadline on: check again later.
            if paused:
                self._deadline = max(self._deadline, self.loop.time() + 1.0)
            self._arm()
            return
        self._refuse(408, b"Request Timeout")

    def _refuse(self, status: int, reason: bytes) -> None:
        phase, self._phase = self._phase, ""
        self._cancel()
        cycle = self.cycle
        if phase == "headers" or (cycle is not None and not cycle.response_started):
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                % (status, reason)
            )
        if phase == "body" and cycle is not None:
            # The application reading this body sees the client gone, and its answer is
            # dropped: the connection has been answered already.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def timeout_protocol(timeouts: ReadTimeouts = DEFAULT_READ_TIMEOUTS) -> type[HttpToolsProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)`` for these ``timeouts``."""
    return type("TimeoutHttpToolsProtocol", (TimeoutHttpToolsProtocol,), {"timeouts": timeouts})
