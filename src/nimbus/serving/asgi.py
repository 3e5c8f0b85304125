"""The few raw-ASGI helpers the inference server needs: headers, bounded body reads, replies."""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from nimbus.errors import NimbusError, PayloadTooLarge, Unauthorized, Unavailable
from nimbus.names import whole_number
from nimbus.serving.errors import MethodNotAllowed, Overloaded, ProtocolError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
OCTETS = b"application/octet-stream"
TEXT = b"text/plain; charset=utf-8"


class Disconnected(Exception):
    """The client went away before its request body arrived."""


def header_map(scope: Scope) -> dict[bytes, bytes]:
    """Request headers by lower-case name (ASGI servers already lower-case them)."""
    return dict(scope["headers"])


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The request body, refused with 413 from Content-Length or as soon as it passes ``limit``.

    A gzip or deflate ``Content-Encoding`` is undone, with the same limit on the result.
    """
    declared = headers.get(b"content-length")
    length = None if declared is None else whole_number(declared.decode("latin-1"))
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body is {length} bytes, above the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get(b"content-encoding", b"identity").lower()
    if encoding == b"identity":
        return body
    return _decompress(body, encoding, limit)


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    wbits = {b"gzip": 31, b"deflate": 15}.get(encoding)
    if wbits is None:
        raise ProtocolError(f"unsupported Content-Encoding {encoding.decode('latin-1')!r}")
    inflater = zlib.decompressobj(wbits=wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(f"the {encoding.decode()} body cannot be decompressed: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes")
    if not inflater.eof:
        raise ProtocolError(f"the {encoding.decode()} body is truncated")
    return out


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send a complete response."""
    headers: Headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_reply(exc: NimbusError) -> tuple[int, bytes, Headers]:
    """Status, ``{"error": "..."}`` body (the OIP error shape) and headers for an error."""
    extra: Headers = []
    if isinstance(exc, Overloaded):
        extra.append((b"retry-after", b"%d" % exc.retry_after))
    elif isinstance(exc, Unavailable):
        extra.append((b"retry-after", b"1"))
    elif isinstance(exc, Unauthorized):
        extra.append((b"www-authenticate", b"Bearer"))
    elif isinstance(exc, MethodNotAllowed):
        extra.append((b"allow", exc.allowed.encode()))
    return exc.status, orjson.dumps({"error": exc.message}), extra
