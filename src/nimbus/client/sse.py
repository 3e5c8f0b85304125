"""Server-sent events (the ``text/event-stream`` format), parsed from a stream of lines.

A pure function of its input so it is tested without a server: see
https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One event: its type (``log``, ``progress``, ``end``…) and its data, JSON-decoded.

    Data that is not a JSON object arrives as ``{"text": <the raw data>}``.
    """

    kind: str
    data: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


def parse_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events in ``lines`` (without their line endings), in order.

    Comments (``: keep-alive``) are skipped; an event is dispatched at the blank line that
    ends it; a last event without its blank line (a stream cut short) is dropped, as the
    specification says.
    """
    kind, last_id = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield Event(kind or "message", _decode("\n".join(data)), last_id)
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value


def _decode(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"text": text}
