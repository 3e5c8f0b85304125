"""How many log streams (``GET /jobs/{id}/logs?follow=true``) each token holds at once.

Every open stream polls the metadata store a few times a second from the server's thread
pool: 500 of them from one viewer token raised the median latency of every other API call
from 8 ms to 1.7 s. :class:`StreamSlots` counts the open streams per token and refuses one
past the limit (429 naming it); :class:`LimitedStream` holds a slot for exactly as long as
its response runs, however it ends (finished, client gone, server stopping).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterable
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
