"""Direct transfers from the client's side: parts PUT straight into the bucket through
presigned URLs, resumable; presigned GETs checked against their hash before the file
appears.

An upload in progress is remembered in ``NIMBUS_HOME/uploads/`` (one small JSON file per
server, dataset, file path, size and modification time, and options), so running the same
upload again after an interruption continues the same session: the parts the bucket holds
are checked against the local file (each part's MD5, which S3 reports as its entity tag)
and only the missing or different ones are sent again, under the SHA-256 the session was
opened with (kept with it: the file is not hashed again). The server checks the whole
file's SHA-256 at the end whatever the client did.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbus.client.transfer import Progress
from nimbus.errors import CorruptBlob, StorageUnavailable
from nimbus.ranged_get import (
    CONNECT_TIMEOUT,
    PART_TRIES,
    RANGE_SIZE,
    READ_TIMEOUT,
    Link,
    RangedDownload,
)
from nimbus.system import write_private
from nimbus.wire.uploads import SHA256_PATTERN, UploadSession

if TYPE_CHECKING:
    import urllib3

URL_BATCH = 32  # presigned URLs asked for at a time: each is used within seconds
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')


def _pool(workers: int) -> urllib3.PoolManager:
    """Connections for the parts of one upload. urllib3 (as boto3), not httpx, whose h11
    parsing holds the GIL and caps threads at ~100 MB/s. Imported here: only uploads need
    it, not every command's start."""
    import urllib3

    timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT)
    return urllib3.PoolManager(maxsize=workers, timeout=timeout)


def part_length(size: int, part_size: int, number: int) -> int:
    """The byte length of part ``number`` (1-based) of a ``size``-byte file."""
    return min(part_size, size - (number - 1) * part_size)


class UrlSource:
    """Presigned URLs by part number, asked for in batches (``fetch(numbers)``)."""

    def __init__(self, fetch: Callable[[list[int]], Mapping[int, str]], numbers: list[int]):
        self._fetch = fetch
        self._numbers = sorted(numbers)
        self._urls: dict[int, str] = {}
        self._lock = threading.Lock()

    def get(self, number: int, *, fresh: bool = False) -> str:
        """The URL for part ``number``; ``fresh`` asks for a new one (the last expired)."""
        with self._lock:
            if fresh or number not in self._urls:
                later = [n for n in self._numbers if n >= number and n not in self._urls]
                batch = [number] if fresh else later[:URL_BATCH] or [number]
                self._urls.update(self._fetch(batch))
            return self._urls.pop(number)


@dataclass
class PartUploader:
    """PUTs parts of ``path`` concurrently; ``progress`` sees bytes as parts finish."""

    path: Path
    session: UploadSession
    urls: UrlSource
    workers: int
    progress: Progress | None = None
    done: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, numbers: list[int]) -> None:
        http = _pool(self.workers)
        with (
            ThreadPoolExecutor(self.workers, thread_name_prefix="part") as pool,
            open(self.path, "rb") as source,
        ):
            futures: list[Future[None]] = [
                pool.submit(self._put, http, source.fileno(), n) for n in numbers
            ]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                future.cancel()
            for future in finished:
                future.result()
            for future in futures:
                if not future.cancelled():
                    future.result()

    def _put(self, http: urllib3.PoolManager, fd: int, number: int) -> None:
        from urllib3.exceptions import HTTPError  # loaded with the pool already

        s = self.session
        length = part_length(s.size, s.part_size, number)
        data = os.pread(fd, length, (number - 1) * s.part_size)
        if len(data) != length:
            raise StorageUnavailable(f"{self.path} changed while it was uploaded")
        fresh = False
        for attempt in range(1, PART_TRIES + 1):
            url = self.urls.get(number, fresh=fresh)
            try:
                response = http.request("PUT", url, body=data, retries=False)
            except HTTPError as exc:
                if attempt == PART_TRIES:
                    raise StorageUnavailable(
                        f"part {number} could not be uploaded: {exc}"
                    ) from None
                fresh = True
                continue
            if response.status < 300:
                break
            if attempt == PART_TRIES or response.status not in (403, 408, 429, 500, 502, 503):
                raise StorageUnavailable(
                    f"the storage service refused part {number}: HTTP {response.status} "
                    f"{response.data[:200].decode(errors='replace')}"
                )
            fresh = True  # 403: the URL expired; ask for a new one
        with self._lock:
            self.done += length
            if self.progress is not None:
                self.progress(self.done, s.size)


def part_matches(fd: int, session: UploadSession, number: int, size: int, etag: str) -> bool:
    """Whether the bucket's part ``number`` (``size`` bytes, entity tag ``etag``) holds the
    same bytes as the local file: same length and same MD5. A part the store reports no
    checksum for (an Azure block: ``etag`` empty) is kept when its length is right: a block
    is stored whole or not at all, it was sent from this file (the resumed session is this
    file's, by path, size and mtime), and the server hashes the whole file at the end."""
    expected = part_length(session.size, session.part_size, number)
    if not etag:
        return size == expected
    match = _MD5_ETAG.match(etag.lower())
    if size != expected or match is None:
        return False
    data = os.pread(fd, expected, (number - 1) * session.part_size)
    return hashlib.md5(data, usedforsecurity=False).hexdigest() == match.group(1)


_SHA256 = re.compile(SHA256_PATTERN)  # as the server takes a declared hash


@dataclass(frozen=True)
class Remembered:
    """An upload in progress as the book has it: its session, and the file's SHA-256 the
    session was opened with (None in a book written before it kept one)."""

    session: str
    sha256: str | None


class ResumeBook:
    """Uploads in progress, by what identifies them, in ``directory`` (NIMBUS_HOME/uploads)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, identity: Mapping[str, Any]) -> Path:
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return self.directory / (hashlib.sha256(canonical.encode()).hexdigest()[:40] + ".json")

    def find(self, identity: Mapping[str, Any]) -> Remembered | None:
        try:
            data = json.loads(self._path(identity).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not data.get("session"):
            return None
        sha256 = data.get("sha256")
        valid = isinstance(sha256, str) and _SHA256.match(sha256) is not None
        return Remembered(str(data["session"]), sha256 if valid else None)

    def remember(self, identity: Mapping[str, Any], session_id: str, sha256: str) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {"session": session_id, "sha256": sha256, **identity}
        write_private(self._path(identity), json.dumps(record))

    def forget(self, identity: Mapping[str, Any]) -> None:
        self._path(identity).unlink(missing_ok=True)


def file_identity(url: str, dataset: str, path: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two runs the same upload: server, dataset, file (path, size, mtime), options."""
    info = path.stat()
    return {
        "url": url,
        "dataset": dataset,
        "path": str(path.resolve()),
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "options": dict(options),
    }


def note(message: str) -> None:
    """A line for the person at the terminal (stderr: never mixed into --json output)."""
    print(message, file=sys.stderr, flush=True)


def fetch_direct(
    link: Link,
    out: Path,
    meta: Mapping[str, Any],
    done: int,
    total: int,
    progress: Progress | None,
    *,
    workers: int = 8,
    range_size: int = RANGE_SIZE,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """GET a presigned URL into ``out`` through a temporary file (byte ranges in parallel),
    checked against the hash and size in ``meta`` before it is renamed into place
    (CorruptBlob otherwise, and no file). ``sleep`` waits before a failed range's retry."""
    size = int(meta["size"])
    expected = str(meta.get("key", "")).rpartition("/")[2].lower()
    part = out.with_name(f".{out.name}.part")
    lock = threading.Lock()
    got = [done]

    def on_bytes(count: int) -> None:
        with lock:
            got[0] += count
            if progress is not None:
                progress(got[0], total)

    download = RangedDownload(link, part, size, workers, range_size=range_size, sleep=sleep)
    try:
        if size:
            digest = download.run(on_bytes)
        else:
            part.write_bytes(b"")
            digest = hashlib.sha256().hexdigest()
        if digest != expected:
            raise CorruptBlob(f"{out.name}: content does not match its hash {expected}")
        part.replace(out)
    finally:
        part.unlink(missing_ok=True)
    return done + size
