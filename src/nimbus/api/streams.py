"""Server-sent event streams that poll the metadata store (``GET /jobs/{id}/logs?follow=true``,
the console's ``/jobs/{id}/events``): how they are encoded and paced, and how many each token
holds at once.

Every open stream polls the metadata store a few times a second from the server's thread
pool: 500 of them from one viewer token raised the median latency of every other API call
from 8 ms to 1.7 s. :class:`StreamSlots` counts the open streams per token and refuses one
past the limit (429 naming it); :class:`LimitedStream` holds a slot for exactly as long as
its response runs, however it ends (finished, client gone, server stopping).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from nimbus.errors import TooManyRequests


class StreamSlots:
    """Open streams per token (in this server process), at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, token_id: str) -> StreamSlot:
        """A slot for one more stream of ``token_id``; 429 when it holds ``limit`` already."""
        with self._lock:
            held = self._open.get(token_id, 0)
            if held >= self.limit:
                raise TooManyRequests(
                    f"this token already follows {held} log streams, the limit "
                    f"(NIMBUS_MAX_LOG_STREAMS_PER_TOKEN={self.limit}); close one, or read "
                    "the logs without follow=true",
                    limit=self.limit,
                )
            self._open[token_id] = held + 1
        return StreamSlot(self, token_id)

    def _release(self, token_id: str) -> None:
        with self._lock:
            left = self._open.get(token_id, 0) - 1
            if left > 0:
                self._open[token_id] = left
            else:
                self._open.pop(token_id, None)


class StreamSlot:
    """One held slot; :meth:`release` gives it back (once, however often it is called)."""

    def __init__(self, slots: StreamSlots, token_id: str) -> None:
        self._slots = slots
        self._token_id: str | None = token_id

    def release(self) -> None:
        token_id, self._token_id = self._token_id, None
        if token_id is not None:
            self._slots._release(token_id)


class LimitedStream(StreamingResponse):
    """A streaming response that gives its slot back when it ends, by any path: a
    generator's ``finally`` alone would miss a response whose body never started."""

    def __init__(self, content: AsyncIterable[bytes], slot: StreamSlot, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


POLL_SECONDS = 0.2  # between polls that found less than a full batch
KEEPALIVE_SECONDS = 15.0  # a comment line after this long with nothing sent
KEEPALIVE = b": keep-alive\n\n"


def sse_event(name: str, data: Any, event_id: int | str | None = None) -> bytes:
    """One server-sent event (data on one line: JSON escapes newlines)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"{head}event: {name}\ndata: {body}\n\n".encode()


@dataclass
class Polled:
    """What one poll of a stream found: its encoded ``events``; ``done`` when the stream
    ends after them; ``full`` when a batch was full, so the next poll comes at once."""

    events: list[bytes]
    done: bool
    full: bool


async def paced(
    stopping: threading.Event, poll: Callable[[], Awaitable[Polled]]
) -> AsyncIterator[bytes]:
    """The body of a polling stream: each poll's events, a keep-alive comment after
    KEEPALIVE_SECONDS of silence, a pause of POLL_SECONDS after a poll that was not full;
    until a poll is ``done``, the server stops, or the client leaves (Starlette cancels the
    generator)."""
    last_sent = time.monotonic()
    while not stopping.is_set():
        found = await poll()
        out = found.events
        if not out and time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
            out = [KEEPALIVE]
        if out:
            yield b"".join(out)
            last_sent = time.monotonic()
        if found.done:
            return
        if not found.full:
            await asyncio.sleep(POLL_SECONDS)


def event_stream(body: AsyncIterable[bytes], slot: StreamSlot) -> LimitedStream:
    """A server-sent event response holding ``slot`` while it runs."""
    return LimitedStream(
        body,
        slot,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
