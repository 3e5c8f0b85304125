"""What every wire model shares: its pydantic configuration and how times are written."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from nimbus.errors import ServerError
from nimbus.security import as_utc


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z``, or None."""
    return None if moment is None else as_utc(moment).isoformat().replace("+00:00", "Z")


def _iso_required(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[
    datetime,
    AfterValidator(as_utc),
    PlainSerializer(_iso_required, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A point in time: an aware UTC ``datetime`` in Python (naive ones, as SQLite returns them,
are taken as UTC, so times compare equal whichever store they came from), ISO-8601 UTC with
``Z`` on the wire."""


class Response(BaseModel):
    """A response body. Fields the client does not know yet are ignored (a newer server may
    add fields), and a parsed response is immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Request(BaseModel):
    """A request body: an unknown field is an error (400 naming it), never silently dropped."""

    model_config = ConfigDict(extra="forbid")


M = TypeVar("M")


def parse(model: type[M], data: Any) -> M:
    """``data`` (decoded JSON of a response) as ``model``; also takes ``list[X]`` and other
    type forms. A body that does not fit is the server's fault: :class:`ServerError`."""
    adapter: TypeAdapter[M] = TypeAdapter(model)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ServerError(
            f"unexpected response: {where}: {first['msg']} ({exc.error_count()} problem(s))"
        ) from None


def dump(value: Any) -> Any:
    """A wire model (or a list or dict of them) back to JSON-ready data, as the server sent it."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [dump(item) for item in value]
    if isinstance(value, dict):
        return {key: dump(item) for key, item in value.items()}
    return value
