"""The job API: what a job's process calls, with its job-scoped token.

Paths are under ``/job-api/{attempt_id}``. JSON bodies are read with a size limit before
they are parsed: the token lives in an environment that user code can read.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from nimbus.api.auth import bearer_secret
from nimbus.api.errors import describe_validation_error
from nimbus.api.state import services_of
from nimbus.api.upload import check_declared_length, store_upload
from nimbus.errors import InvalidInput, PayloadTooLarge
from nimbus.names import MAX_INT64, parse_int
from nimbus.services.job_api import AttemptContext, validate_artifact_name
from nimbus.wire.job_api import (
    Artifact,
    AttemptSpec,
    HeartbeatReply,
    MetricsRequest,
    Ok,
    ProgressRequest,
    ResultRequest,
    StoredCheckpoint,
)

PREFIX = "/job-api/{attempt_id}"
MAX_JSON_BYTES = 16 * 1024**2
router = APIRouter(prefix=PREFIX, tags=["job API"])
Body = TypeVar("Body", bound=BaseModel)


def attempt_context(attempt_id: str, request: Request) -> AttemptContext:
    """The attempt this request acts for: 401 for a wrong token, 409 for a stale attempt."""
    secret = bearer_secret(request.headers.get("authorization"))
    return services_of(request).job_api.authenticate(secret, attempt_id)


CurrentAttempt = Annotated[AttemptContext, Depends(attempt_context)]


async def read_json(request: Request, model: type[Body]) -> Body:
    """The body parsed as ``model``; 413 past MAX_JSON_BYTES, 400 naming a bad field."""
    check_declared_length(request, MAX_JSON_BYTES)
    data = bytearray()
    try:
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_JSON_BYTES:
                raise PayloadTooLarge(f"body over {MAX_JSON_BYTES} bytes", limit=MAX_JSON_BYTES)
    except ClientDisconnect:
        raise InvalidInput("the client disconnected") from None
    try:
        return model.model_validate(json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput("the request body is not valid JSON") from None
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise InvalidInput(describe_validation_error(errors)) from None


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI description of a JSON body that a route reads itself (with
    :func:`read_json`, for its size limit), so the document still shows it."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _bytes(
    download_chunks: Any, size: int, headers: dict[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        download_chunks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(size), **(headers or {})},
    )


@router.get("/spec", response_model=AttemptSpec)
def spec(ctx: CurrentAttempt, request: Request) -> AttemptSpec:
    return services_of(request).job_api.spec(ctx)


@router.get("/blobs/{key:path}")
def blob(key: str, ctx: CurrentAttempt, request: Request) -> StreamingResponse:
    """Bytes of an input of the job (its dataset version's files, its code, its latest
    checkpoint), verified."""
    download = services_of(request).job_api.blob(ctx, key)
    return _bytes(download.chunks, download.size)


@router.post("/heartbeat", response_model=HeartbeatReply)
def heartbeat(ctx: CurrentAttempt, request: Request) -> HeartbeatReply:
    return services_of(request).job_api.heartbeat(ctx)


@router.post("/metrics", response_model=Ok, openapi_extra=request_body(MetricsRequest))
async def metrics(ctx: CurrentAttempt, request: Request) -> Ok:
    body = await read_json(request, MetricsRequest)
    await run_in_threadpool(services_of(request).job_api.metrics, ctx, body)
    return Ok()


@router.post("/progress", response_model=Ok, openapi_extra=request_body(ProgressRequest))
async def progress(ctx: CurrentAttempt, request: Request) -> Ok:
    body = await read_json(request, ProgressRequest)
    await run_in_threadpool(services_of(request).job_api.progress, ctx, body)
    return Ok()


@router.post("/result", response_model=Ok, openapi_extra=request_body(ResultRequest))
async def result(ctx: CurrentAttempt, request: Request) -> Ok:
    body = await read_json(request, ResultRequest)
    await run_in_threadpool(services_of(request).job_api.result, ctx, body)
    return Ok()


@router.put("/checkpoints/{step}", status_code=201, response_model=StoredCheckpoint)
async def put_checkpoint(
    ctx: CurrentAttempt,
    request: Request,
    step: Annotated[int, Path(ge=0, le=MAX_INT64)],
    epoch: Annotated[int | None, Query(ge=0, le=MAX_INT64)] = None,
) -> StoredCheckpoint:
    """The raw body is the checkpoint; recorded only once its bytes are stored whole."""
    services = services_of(request)
    return await store_upload(
        request,
        services.blobs.staging_dir,
        services.settings.max_upload_bytes,
        lambda staged: services.job_api.put_checkpoint(
            ctx, step, epoch, staged.path, staged.sha256, staged.size
        ),
    )


@router.get("/checkpoints/latest/ref", response_model=StoredCheckpoint)
def latest_checkpoint_ref(ctx: CurrentAttempt, request: Request) -> StoredCheckpoint:
    """Which blob the job's latest complete checkpoint is (404: none yet): the runtime
    reads it through the node's cache, which the node may have filled from the bucket."""
    return services_of(request).job_api.latest_checkpoint_ref(ctx)


@router.get("/checkpoints/latest")
def latest_checkpoint(ctx: CurrentAttempt, request: Request) -> StreamingResponse:
    """The job's latest complete checkpoint (from any attempt), or 404."""
    step, download = services_of(request).job_api.latest_checkpoint(ctx)
    return _bytes(download.chunks, download.size, {"X-Checkpoint-Step": str(step)})


@router.put("/artifacts/{name}", status_code=201, response_model=Artifact)
async def put_artifact(ctx: CurrentAttempt, request: Request, name: str) -> Artifact:
    """An output file of the job: spec.json, weights.safetensors, model.onnx or another
    safe name."""
    services = services_of(request)
    validate_artifact_name(name)  # before a byte is stored
    declared = request.headers.get("content-length")
    if declared is not None:
        size = parse_int(declared.strip(), "Content-Length header")
        services.job_api.check_artifact_size(size)
        # Before the body: 507 if the tenant's storage quota cannot take it.
        await run_in_threadpool(services.job_api.check_artifact_quota, ctx, name, size)
    return await store_upload(
        request,
        services.blobs.staging_dir,
        min(services.settings.max_upload_bytes, services.settings.max_artifact_bytes),
        lambda staged: services.job_api.put_artifact(
            ctx, name, staged.path, staged.sha256, staged.size
        ),
    )
