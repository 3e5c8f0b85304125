"""The body of every error answer: ``{"error": {"code": "...", "message": "..."}}``."""

from __future__ import annotations

from typing import Any

from nimbus.wire.base import Response


class ErrorDetail(Response):
    """What went wrong: a stable ``code`` (``invalid_input``, ``not_found``, ...) and a
    message for people that names the offending field or resource."""

    code: str
    message: str
    details: dict[str, Any] | None = None  # e.g. the field or the limit, when there is one


class ErrorBody(Response):
    """An error answer (4xx; a 5xx is a bug)."""

    error: ErrorDetail
