"""Errors of the MLflow-compatible API in MLflow's own shape: ``{"error_code":
"RESOURCE_DOES_NOT_EXIST", "message": "..."}`` with the same HTTP status a Nimbus error has,
so MLflow clients raise their usual exceptions (``RestException`` with that code)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from nimbus.errors import InvalidInput

PREFIXES = ("/api/2.0/mlflow/", "/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow/")

_BY_CODE = {
    "unauthorized": "UNAUTHENTICATED",
    "forbidden": "PERMISSION_DENIED",
    "not_found": "RESOURCE_DOES_NOT_EXIST",
    "conflict": "RESOURCE_ALREADY_EXISTS",
    "method_not_allowed": "ENDPOINT_NOT_FOUND",
}
_BY_STATUS = {
    400: "INVALID_PARAMETER_VALUE",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    503: "TEMPORARILY_UNAVAILABLE",
    507: "RESOURCE_EXHAUSTED",
}


def is_mlflow(path: str) -> bool:
    """Whether a request path belongs to the MLflow-compatible API."""
    return path.startswith(PREFIXES)


def error_code(status: int, code: str) -> str:
    """MLflow's error code for a Nimbus error (its status and Nimbus code)."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return "INVALID_PARAMETER_VALUE" if 400 <= status < 500 else "INTERNAL_ERROR"


def mlflow_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error_code": error_code(status, code), "message": message}
    return JSONResponse(body, status_code=status, headers=headers)


def no_nul_in_query(request: Request) -> None:
    """A router dependency: 400 for a NUL character in a query parameter or the path (the
    metadata store's text cannot hold one)."""
    if "\x00" in request.url.path or any("\x00" in v for v in request.query_params.values()):
        raise InvalidInput("the request's path or query parameters contain a NUL character")
