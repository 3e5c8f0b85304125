"""HTML-form bodies for ``/predict``: ``multipart/form-data`` and, for text, urlencoded.

People send files as forms (``curl -F file=@photo.jpg``, ``requests.post(files=...)``, an
HTML ``<form enctype="multipart/form-data">``). :func:`read_form` parses such a body as it
streams in and turns it into the body ``/predict`` takes otherwise, so everything after is
the same path: an image model gets the one file part's bytes; a text model the ``text``
field (a plain field, or a file part named ``text``) as ``{"text": ...}``; a tabular model
the ``features`` field (JSON) as ``{"features": ...}``. A body labelled urlencoded that is
in fact an image or a JSON object (``curl --data-binary @photo.jpg`` and ``curl -d '{...}'``
label every body so) is taken as it is.

Limits apply while streaming, never after buffering: the body is refused (413) from its
Content-Length or as soon as it passes the body limit, and an image part is refused as soon
as its header shows more pixels than allowed, before the rest of it is read. A form that is
not well formed, or lacks what the model needs, is a 400 that names the problem.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import orjson
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from nimbus.datasets.domain import Task
from nimbus.errors import InvalidInput, PayloadTooLarge
from nimbus.serving import asgi

MULTIPART = b"multipart/form-data"
URLENCODED = b"application/x-www-form-urlencoded"
MAX_PARTS = 64
# An image part's header is looked at when it has this many bytes, then at 4x that, and so
# on: a PNG tells its size in its first 33 bytes, a JPEG usually within a few KB.
FIRST_PROBE = 256


def is_form(headers: dict[bytes, bytes]) -> bool:
    """Whether the request body is a form :func:`read_form` takes."""
    kind = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
    return kind in (MULTIPART, URLENCODED)


@dataclass
class _Part:
    name: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


async def read_form(
    receive: asgi.Receive,
    headers: dict[bytes, bytes],
    task: Task,
    *,
    max_body: int,
    max_pixels: int,
) -> bytes:
    """Read a form body from ``receive`` and return the equivalent ``/predict`` body."""
    if headers.get(b"content-encoding", b"identity").lower() != b"identity":
        raise InvalidInput("a form body cannot be compressed; send it without Content-Encoding")
    kind, options = parse_options_header(headers.get(b"content-type", b""))
    if kind == URLENCODED:
        body = await asgi.read_body(receive, headers, max_body)
        if _is_raw(body):
            return body  # curl --data-binary / -d label any body urlencoded: take it as sent
        return _from_fields(_urlencoded(body), task)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInput("the multipart/form-data Content-Type has no boundary parameter")
    form = _Form(boundary, task, max_pixels)
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise PayloadTooLarge(f"the body is {int(declared)} bytes, above the limit of {max_body}")
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asgi.Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body:
            raise PayloadTooLarge(f"the body is over the limit of {max_body} bytes")
        form.feed(chunk)
        if not message.get("more_body", False):
            break
    return form.finish()


class _Form:
    """A multipart body parsed chunk by chunk into parts, image parts probed as they grow."""

    def __init__(self, boundary: bytes, task: Task, max_pixels: int) -> None:
        self.task = task
        self.max_pixels = max_pixels
        self.parts: list[_Part] = []
        self.ended = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""
        self._next_probe = FIRST_PROBE
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_data,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise InvalidInput(f"malformed multipart/form-data body: {exc}") from None

    def finish(self) -> bytes:
        if not self.ended:
            raise InvalidInput(
                "the multipart/form-data body ends before its closing boundary"
                if self.parts
                else "the multipart/form-data body holds no part with this boundary"
            )
        files = [part for part in self.parts if part.filename is not None]
        if self.task is Task.IMAGE:
            if len(files) != 1:
                named = ", ".join(repr(part.name) for part in files)
                raise InvalidInput(
                    "the form has no file part; send the image as one (curl -F file=@photo.jpg)"
                    if not files
                    else f"the form has {len(files)} files ({named}); send one image"
                )
            return bytes(files[0].data)
        fields: dict[str, str] = {}
        for part in self.parts:
            try:
                fields[part.name] = part.data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"form field {part.name!r} is not UTF-8 text") from None
        return _from_fields(fields, self.task)

    def _part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise InvalidInput(f"the form has more than {MAX_PARTS} parts")
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if bytes(self._header_name).strip().lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        kind, options = parse_options_header(self._disposition)
        if kind != b"form-data" or b"name" not in options:
            raise InvalidInput(
                f"form part {len(self.parts) + 1} has no 'Content-Disposition: form-data; "
                "name=...' header"
            )
        filename = options.get(b"filename")
        self.parts.append(
            _Part(
                options[b"name"].decode("utf-8", "replace"),
                None if filename is None else filename.decode("utf-8", "replace"),
            )
        )
        self._next_probe = FIRST_PROBE

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.data += data[start:end]
        if (
            self.task is Task.IMAGE
            and part.filename is not None
            and len(part.data) >= self._next_probe
        ):
            self._next_probe = 4 * len(part.data)
            _check_pixels(part, self.max_pixels)

    def _end(self) -> None:
        self.ended = True


def _check_pixels(part: _Part, max_pixels: int) -> None:
    """Refuse (413) an image part whose header, if already here, shows too many pixels."""
    size = image_size(bytes(part.data[:_HEADER_WINDOW]))
    if size is not None and size[0] * size[1] > max_pixels:
        raise PayloadTooLarge(
            f"the image in form field {part.name!r} has {size[0] * size[1]} pixels, above "
            f"the limit of {max_pixels}"
        )


_HEADER_WINDOW = 1 << 20  # a JPEG whose size is not told within this is judged when whole
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def image_size(head: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the first bytes of a PNG or JPEG; None when they do not
    tell it (yet)."""
    if head.startswith(_PNG):
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if not head.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(head):
        if head[at] != 0xFF:
            return None  # not a marker where one must be: the decoder will say so
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in _JPEG_STANDALONE:
            at += 2
        elif marker in _JPEG_SOF:
            if at + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        else:
            at += 2 + struct.unpack(">H", head[at + 2 : at + 4])[0]
    return None


def _is_raw(body: bytes) -> bool:
    """Whether a body labelled urlencoded is in fact an image file or a JSON object."""
    return body.startswith((_PNG, b"\xff\xd8")) or body.lstrip().startswith(b"{")


def _urlencoded(body: bytes) -> dict[str, str]:
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"malformed application/x-www-form-urlencoded body: {exc}") from None
    return {name: values[-1] for name, values in parsed.items()}


def _from_fields(fields: dict[str, str], task: Task) -> bytes:
    """The JSON ``/predict`` body a text or tabular model takes, from the form's fields."""
    if task is Task.IMAGE:
        raise InvalidInput(
            "an image must be sent as a file in a multipart/form-data form "
            '(curl -F file=@photo.jpg; an HTML form needs enctype="multipart/form-data")'
        )
    if task is Task.TEXT:
        if "text" not in fields:
            raise InvalidInput(
                f"the form has no 'text' field (fields: {sorted(fields) or 'none'}); "
                "send -F text=..."
            )
        return orjson.dumps({"text": fields["text"]})
    if "features" not in fields:
        raise InvalidInput(
            "the form has no 'features' field; send -F 'features=[1.0, 2.0, ...]' (JSON)"
        )
    try:
        features = orjson.loads(fields["features"])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"form field 'features' is not JSON: {exc}") from None
    return orjson.dumps({"features": features})
