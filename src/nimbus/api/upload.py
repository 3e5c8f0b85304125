"""Streaming a request body to a staging file: hashed on the way, size-limited, never
held in memory whole.

The event loop only receives. Chunks are gathered into batches of about
:data:`BATCH_BYTES`; each batch is hashed on one worker thread and written on another
(hashlib and file writes release the GIL) while the loop receives the next, so receiving,
hashing and writing overlap and at most two batches are held in memory. Every
:data:`FLUSH_BYTES` written, a third thread starts flushing the file to disk
(``fdatasync``) while the upload goes on, so that storing it durably afterwards (fsync,
rename) has little left to wait for.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from nimbus.errors import InvalidInput, PayloadTooLarge
from nimbus.names import parse_int
from nimbus.services.quotas import QuotaService

T = TypeVar("T")

BATCH_BYTES = 4 * 1024 * 1024
FLUSH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class StagedUpload:
    path: Path
    sha256: str
    size: int


def declared_length(request: Request) -> int | None:
    """The body's Content-Length; None without one (a chunked body). 400 if invalid."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    return parse_int(declared.strip(), "Content-Length header")


def check_declared_length(request: Request, max_bytes: int) -> None:
    """Refuse up front (413) a body whose Content-Length is over the limit."""
    declared = declared_length(request)
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(
            f"upload of {declared} bytes is over the limit of {max_bytes} bytes",
            limit=max_bytes,
        )


async def check_storage_quota_first(
    request: Request, quotas: QuotaService | None, tenant_id: int, what: str
) -> None:
    """Refuse (507) before a byte of the body is read an upload whose Content-Length is
    more than the tenant has left of its storage quota. What is stored is checked again
    once known (a chunked body declares no length; a dataset adds prepared arrays)."""
    declared = declared_length(request)
    if declared is not None and quotas is not None:
        await run_in_threadpool(quotas.check_bytes_now, tenant_id, declared, what)


def _hash(digest: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        digest.update(chunk)


def _write(fd: int, chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]


class _StagingFile:
    """The file an upload is written to, and the work in flight on it: one batch's hash
    and write, at most one flush, each on a thread of this upload's own small pool."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(3, thread_name_prefix="upload")
        self._batch: list[Future[None]] = []
        self._flush: Future[None] | None = None
        self._batch_size = 0  # bytes of the batch in flight
        self._written = 0  # bytes whose write has completed
        self._flushed = 0  # bytes covered by the last flush started

    async def add(self, batch: list[bytes], size: int) -> None:
        """Wait for the previous batch, then start hashing and writing this one."""
        await self._settle()
        self._batch = [
            self._pool.submit(_hash, self.digest, batch),
            self._pool.submit(_write, self.fd, batch),
        ]
        self._batch_size = size
        if self._written - self._flushed >= FLUSH_BYTES and (
            self._flush is None or self._flush.done()
        ):
            if self._flush is not None:
                self._flush.result()
            self._flushed = self._written
            self._flush = self._pool.submit(os.fdatasync, self.fd)

    async def _settle(self) -> None:
        if self._batch:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in self._batch))
            self._batch = []
            self._written += self._batch_size

    async def finish(self) -> None:
        """Wait for every write; raise the first error of any."""
        await self._settle()
        if self._flush is not None:
            await asyncio.wrap_future(self._flush)

    async def close(self) -> None:
        """Close the file once no thread works on it any more. A thread cannot be
        interrupted: if this task is cancelled meanwhile, the last thread to finish closes
        the file."""
        busy = [f for f in (*self._batch, self._flush) if f is not None and not f.done()]
        self._pool.shutdown(wait=False)
        _close_when_done(self.fd, busy)
        if busy:
            await asyncio.wait([asyncio.wrap_future(f) for f in busy])


def _close_when_done(fd: int, futures: list[Future[None]]) -> None:
    """Close ``fd`` now if ``futures`` is empty, else once the last of them is done."""
    if not futures:
        os.close(fd)
        return
    lock = threading.Lock()
    left = [len(futures)]

    def one_done(_: object) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            os.close(fd)

    for future in futures:
        future.add_done_callback(one_done)


async def receive_upload(request: Request, staging_dir: Path, max_bytes: int) -> StagedUpload:
    """Stream the body into a new file in ``staging_dir``; on any failure (413 on going
    over ``max_bytes``, client gone) the partial file is deleted."""
    check_declared_length(request, max_bytes)
    staging_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=staging_dir, prefix="upload-")
    path = Path(name)
    staging = _StagingFile(fd)
    size = 0
    try:
        try:
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
                        await staging.add(batch, batch_size)
                        batch, batch_size = [], 0
            except ClientDisconnect:
                raise InvalidInput("upload interrupted: the client disconnected") from None
            if batch:
                await staging.add(batch, batch_size)
            await staging.finish()
        finally:
            await staging.close()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return StagedUpload(path, staging.digest.hexdigest(), size)


async def store_upload(
    request: Request, staging_dir: Path, max_bytes: int, store: Callable[[StagedUpload], T]
) -> T:
    """The body received into ``staging_dir`` (:func:`receive_upload`), handed to ``store``
    in the thread pool, and the staged file deleted whatever ``store`` did with it."""
    staged = await receive_upload(request, staging_dir, max_bytes)
    try:
        return await run_in_threadpool(store, staged)
    finally:
        staged.path.unlink(missing_ok=True)
