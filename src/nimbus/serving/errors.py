"""Errors of the inference server, rooted in the one Nimbus hierarchy."""

from __future__ import annotations

from typing import Any

from nimbus.errors import InvalidInput, NimbusError, Unavailable


class ProtocolError(InvalidInput):
    """An inference request breaks the Open Inference Protocol or the model's signature (400)."""

    code = "invalid_request"


class Overloaded(Unavailable):
    """The batching queue is full: the client should retry later (503 + Retry-After)."""

    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class MethodNotAllowed(NimbusError):
    """The route exists but not with this HTTP method (405)."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, allowed: str) -> None:
        super().__init__(f"method not allowed; use {allowed}")
        self.allowed = allowed
