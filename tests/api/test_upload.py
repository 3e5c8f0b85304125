"""Streaming a request body to a staging file, driven through a real Starlette request."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from nimbus.api import upload
from nimbus.api.upload import receive_upload
from nimbus.errors import InvalidInput, PayloadTooLarge


def request_of(chunks: Iterable[bytes], *, disconnect: bool = False) -> Request:
    """A request whose body arrives in ``chunks`` (then a disconnect, if asked)."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks
    ]
    if disconnect:
        messages.append({"type": "http.disconnect"})
    else:
        messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return messages.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    return Request(scope, receive)


def receive(chunks: Iterable[bytes], staging: Path, limit: int = 1 << 30, **kw: Any) -> Any:
    return asyncio.run(receive_upload(request_of(chunks, **kw), staging, limit))


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batches of 1000 bytes and a flush every 3000: many of each in a small body."""
    monkeypatch.setattr(upload, "BATCH_BYTES", 1000)
    monkeypatch.setattr(upload, "FLUSH_BYTES", 3000)
    flushed: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return flushed


def test_body_is_written_and_hashed_across_batches(
    tmp_path: Path, small_batches: list[int]
) -> None:
    chunks = [os.urandom(size) for size in (1, 999, 1000, 1500, 7, 4000, 333)]
    body = b"".join(chunks)
    staged = receive(chunks, tmp_path)
    assert staged.size == len(body)
    assert staged.sha256 == hashlib.sha256(body).hexdigest()
    assert staged.path.read_bytes() == body
    assert staged.path.parent == tmp_path
    assert small_batches, "no flush started while the body streamed in"


def test_empty_body(tmp_path: Path) -> None:
    staged = receive([], tmp_path)
    assert staged.size == 0 and staged.path.read_bytes() == b""
    assert staged.sha256 == hashlib.sha256(b"").hexdigest()


def test_over_the_limit_leaves_no_file(tmp_path: Path, small_batches: list[int]) -> None:
    with pytest.raises(PayloadTooLarge):
        receive([b"x" * 1500] * 4, tmp_path, limit=5000)
    assert list(tmp_path.iterdir()) == []


def test_client_gone_leaves_no_file(tmp_path: Path, small_batches: list[int]) -> None:
    with pytest.raises(InvalidInput, match="disconnected"):
        receive([b"y" * 1200] * 3, tmp_path, disconnect=True)
    assert list(tmp_path.iterdir()) == []


def test_write_error_is_raised_and_leaves_no_file(
    tmp_path: Path, small_batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        receive([b"z" * 1000] * 5, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cancels", [1, 2])
def test_cancelled_upload_closes_its_file_only_after_its_threads(
    tmp_path: Path, small_batches: list[int], monkeypatch: pytest.MonkeyPatch, cancels: int
) -> None:
    """A thread cannot be interrupted: the file stays open until it is done, whether the
    cancelled task waits for it (one cancel) or is cancelled again while waiting."""
    writing, release = threading.Event(), threading.Event()
    events: list[str] = []
    real_write, real_close = os.write, os.close

    def slow_write(fd: int, data: Any) -> int:
        writing.set()
        release.wait(10)
        written = real_write(fd, data)
        events.append("write")
        return written

    def close(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
            events.append("close")
        real_close(fd)

    monkeypatch.setattr(os, "write", slow_write)
    monkeypatch.setattr(os, "close", close)

    async def main() -> None:
        body = request_of([b"a" * 1000] * 5)
        task = asyncio.ensure_future(receive_upload(body, tmp_path, 1 << 30))
        while not writing.is_set():
            await asyncio.sleep(0.01)
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.05)
        assert "close" not in events  # a thread still writes to it
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(1000):
            if "close" in events:
                break
            await asyncio.sleep(0.01)
        assert events[-1] == "close" and events.count("close") == 1

    asyncio.run(main())
    assert list(tmp_path.iterdir()) == []
