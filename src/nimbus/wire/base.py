"""What every wire model shares: its pydantic configuration and how times are written."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, PlainSerializer, TypeAdapter

from nimbus.security import as_utc


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z``, or None."""
    return None if moment is None else as_utc(moment).isoformat().replace("+00:00", "Z")


def _iso_required(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(_iso_required, return_type=str, when_used="json")]
"""A point in time: a ``datetime`` in Python, ISO-8601 UTC with ``Z`` on the wire."""


class Response(BaseModel):
    """A response body. Fields the client does not know yet are ignored (a newer server may
    add fields), and a parsed response is immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Request(BaseModel):
    """A request body: an unknown field is an error (400 naming it), never silently dropped."""

    model_config = ConfigDict(extra="forbid")


M = TypeVar("M")


def parse(model: type[M], data: Any) -> M:
    """``data`` (decoded JSON) as ``model``; also takes ``list[X]`` and other type forms."""
    adapter: TypeAdapter[M] = TypeAdapter(model)
    return adapter.validate_python(data)


def dump(value: Any) -> Any:
    """A wire model (or a list or dict of them) back to JSON-ready data, as the server sent it."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [dump(item) for item in value]
    if isinstance(value, dict):
        return {key: dump(item) for key, item in value.items()}
    return value
