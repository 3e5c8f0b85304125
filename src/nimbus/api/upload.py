"""Streaming a request body to a staging file: hashed on the way, size-limited, never
held in memory whole.

Chunks are gathered into ~4 MiB batches; each batch is hashed and written on a worker
thread while the event loop receives the next one (hashlib and file writes release the
GIL), so receiving, hashing and writing overlap.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from nimbus.errors import InvalidInput, PayloadTooLarge

BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class StagedUpload:
    path: Path
    sha256: str
    size: int


def check_declared_length(request: Request, max_bytes: int) -> None:
    """Refuse up front (413) a body whose Content-Length is over the limit."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    if not declared.strip().isdigit():
        raise InvalidInput("invalid Content-Length header")
    if int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes",
            limit=max_bytes,
        )


def _write(out: BinaryIO, digest: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)


async def receive_upload(request: Request, staging_dir: Path, max_bytes: int) -> StagedUpload:
    """Stream the body into a new file in ``staging_dir``; on any failure (413 on going
    over ``max_bytes``, client gone) the partial file is deleted."""
    check_declared_length(request, max_bytes)
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=staging_dir, prefix="upload-")
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    pending: asyncio.Future[None] | None = None
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            batch: list[bytes] = []
            batch_size = 0
            try:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"upload is over the limit of {max_bytes} bytes", limit=max_bytes
                        )
                    batch.append(chunk)
                    batch_size += len(chunk)
                    if batch_size >= BATCH_BYTES:
                        if pending is not None:
                            await pending
                        pending = asyncio.ensure_future(
                            run_in_threadpool(_write, out, digest, batch)
                        )
                        batch, batch_size = [], 0
            except ClientDisconnect:
                raise InvalidInput("upload interrupted: the client disconnected") from None
            finally:
                if pending is not None:
                    await asyncio.gather(pending, return_exceptions=True)
            if pending is not None:
                pending.result()
            if batch:
                await run_in_threadpool(_write, out, digest, batch)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StagedUpload(path, digest.hexdigest(), size)
