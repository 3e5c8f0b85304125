"""Every failure answers JSON ``{"error": {"code", "message"}}`` with a fitting status."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nimbus.api.context import audit_context
from nimbus.api.mlflow_errors import is_mlflow, mlflow_error
from nimbus.errors import NimbusError
from nimbus.wire.errors import ErrorBody

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
}
_LOCATIONS = {"query": "query parameter", "path": "path parameter", "header": "header"}


def error_response(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    request: Request | None = None,
    details: dict[str, Any] | None = None,
) -> JSONResponse:
    if request is not None and (ctx := audit_context(request.scope)) is not None:
        ctx.error = code
    if request is not None and is_mlflow(request.url.path):
        return mlflow_error(status, code, message, headers)
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def describe_validation_error(errors: Sequence[Any]) -> str:
    """One line naming the first offending field, e.g. ``invalid query parameter 'seed'``."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ())]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    where = loc[0] if loc else ""
    field = ".".join(loc[1:])
    msg = str(first.get("msg", "is invalid"))
    if where == "body":
        if not field:
            return f"invalid request body: {msg}"
        return f"invalid field {field!r} in the request body: {msg}"
    return f"invalid {_LOCATIONS.get(where, where)} {field!r}: {msg}"


async def nimbus_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NimbusError)
    headers = None
    if exc.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="nimbus"'}
    if exc.status >= 500:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, exc.code, exc.message)
    return error_response(exc.status, exc.code, exc.message, headers, request, exc.details)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(
        400, "invalid_input", describe_validation_error(exc.errors()), request=request
    )


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = f"no such route: {request.method} {request.url.path[:200]}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path[:200]}"
    else:
        message = str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, message, headers, request)


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises the exception after this response, and uvicorn then logs the
    # traceback; one line here ties it to the request.
    log.error(
        "%s %s failed with an unexpected %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc,
    )
    return error_response(
        500, "internal", "internal server error (a bug; see the server log)", request=request
    )


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``, and describe their answers in its OpenAPI document."""
    _describe_errors(app)
    app.add_exception_handler(NimbusError, nimbus_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def _describe_errors(app: FastAPI) -> None:
    """Every operation's errors in the OpenAPI document as they really are: FastAPI lists a
    422 with its own validation body, but a bad request answers 400 with :class:`ErrorBody`,
    like every other 4xx (401, 403, 404, 409, 413)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas["ErrorBody"] = body
        error = {
            "description": "An error: the message names the offending field or resource",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                responses["4XX"] = error
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
