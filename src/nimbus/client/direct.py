"""Direct transfers from the client's side: parts PUT straight into the bucket through
presigned URLs, resumable; presigned GETs checked against their hash before the file
appears.

An upload in progress is remembered in ``NIMBUS_HOME/uploads/`` (one small JSON file per
server, dataset, file path, size and modification time, and options), so running the same
upload again after an interruption continues the same session: the parts the bucket holds
are checked against the local file (each part's MD5, which S3 reports as its entity tag)
and only the missing or different ones are sent again. The server checks the whole file's
SHA-256 at the end whatever the client did.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

from nimbus.client.transfer import Progress
from nimbus.errors import CorruptBlob, NotFound, StorageUnavailable
from nimbus.ranges import fill_and_hash
from nimbus.system import write_private
from nimbus.wire.uploads import UploadSession

if TYPE_CHECKING:
    import urllib3

URL_BATCH = 32  # presigned URLs asked for at a time: each is used within seconds
PART_TRIES = 4
RANGE_SIZE = 8 * 1024 * 1024  # one ranged GET of a download: an upload part (measured best)
CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 10.0  # seconds
READ_TIMEOUT = 120.0  # seconds without a byte
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})  # worth another try
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


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ResumeBook:
    """Uploads in progress, by what identifies them, in ``directory`` (NIMBUS_HOME/uploads)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, identity: Mapping[str, Any]) -> Path:
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return self.directory / (hashlib.sha256(canonical.encode()).hexdigest()[:40] + ".json")

    def find(self, identity: Mapping[str, Any]) -> str | None:
        try:
            data = json.loads(self._path(identity).read_text())
        except (OSError, ValueError):
            return None
        return str(data.get("session")) if isinstance(data, dict) and data.get("session") else None

    def remember(self, identity: Mapping[str, Any], session_id: str) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self._path(identity), json.dumps({"session": session_id, **identity}))

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


class Link:
    """The presigned GET of one file; ``fresh(stale)`` asks the server for a new one (the
    last expired: 403) once, however many ranges found it stale at the same time."""

    def __init__(self, url: str, renew: Callable[[], str] | None = None) -> None:
        self.url = url
        self._renew = renew
        self._lock = threading.Lock()

    def fresh(self, stale: str) -> str:
        with self._lock:
            if self.url == stale and self._renew is not None:
                self.url = self._renew()
            return self.url


class _Again(Exception):
    """A range to fetch again (a status worth retrying; ``expired``: with a fresh URL)."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


class Connections:
    """One kept-alive connection per thread and origin for the ranged GETs of a download.

    The standard library's ``http.client``, not urllib3: its ``readinto`` fills the
    caller's buffer straight from the socket, where urllib3's reads into a new bytes object
    and copies that (about a fifth more CPU per byte on a 512 MiB download here, CPU that the
    hashing thread shares on a small machine). A connection that failed, or whose response
    was not read to its end, is closed and never handed out again."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _held(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        held = getattr(self._local, "held", None)
        if held is None:
            held = self._local.held = {}
        return held

    def get(self, url: SplitResult) -> http.client.HTTPConnection:
        held = self._held()
        origin = (url.scheme, url.netloc)
        conn = held.get(origin)
        if conn is None:
            port = url.port
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(
                    url.hostname or "", port, timeout=CONNECT_TIMEOUT, context=_tls()
                )
            else:
                conn = http.client.HTTPConnection(url.hostname or "", port, timeout=CONNECT_TIMEOUT)
            held[origin] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def drop(self, url: SplitResult) -> None:
        conn = self._held().pop((url.scheme, url.netloc), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


class RangedDownload:
    """A presigned GET fetched as byte ranges, ``workers`` at a time, written in place in
    ``part`` and hashed as they land (:func:`nimbus.ranges.fill_and_hash`). A range whose
    connection fails, is cut short, or is answered 408/429/5xx is fetched again (with a
    fresh URL after a 403: the URL expired), :data:`PART_TRIES` times in all."""

    def __init__(
        self,
        link: Link,
        part: Path,
        size: int,
        workers: int,
        *,
        range_size: int = RANGE_SIZE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.link, self.part, self.size, self.workers = link, part, size, workers
        self.range_size, self.sleep = range_size, sleep

    def run(self, on_bytes: Callable[[int], None]) -> str:
        """Fetch the whole into ``part``; its SHA-256."""
        fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        connections = Connections()

        def fill(fd: int, lo: int, hi: int) -> None:
            self._get(connections, fd, (lo, hi), on_bytes)

        try:
            return fill_and_hash(
                fd, self.size, fill, range_size=self.range_size, workers=self.workers
            )
        finally:
            os.close(fd)
            connections.close()

    def _get(
        self,
        connections: Connections,
        fd: int,
        bounds: tuple[int, int],
        on_bytes: Callable[[int], None],
    ) -> None:
        url = self.link.url
        for attempt in range(1, PART_TRIES + 1):
            got = [0]  # bytes of this attempt reported so far
            try:
                self._read(connections, url, fd, bounds, got, on_bytes)
                return
            except (_Again, http.client.HTTPException, OSError) as exc:
                on_bytes(-got[0])  # those bytes come again
                if attempt == PART_TRIES:
                    raise StorageUnavailable(
                        f"download from the storage service failed {PART_TRIES} times: {exc!r}"
                    ) from None
                if isinstance(exc, _Again) and exc.expired:
                    url = self.link.fresh(url)
                else:
                    self.sleep(0.2 * attempt)

    def _read(
        self,
        connections: Connections,
        url: str,
        fd: int,
        bounds: tuple[int, int],
        got: list[int],
        on_bytes: Callable[[int], None],
    ) -> None:
        """One GET of bytes ``lo..hi`` into ``fd`` (counted in ``got`` and reported to
        ``on_bytes`` as they land)."""
        lo, hi = bounds
        where = urlsplit(url)
        target = where.path + (f"?{where.query}" if where.query else "")
        offset = lo
        done = False
        try:
            conn = connections.get(where)
            if conn.sock is None:
                conn.connect()
                assert conn.sock is not None
                conn.sock.settimeout(READ_TIMEOUT)
            conn.request("GET", target, headers={"Range": f"bytes={lo}-{hi - 1}"})
            response = conn.getresponse()
            status = response.status
            if status == 404:
                raise NotFound("the storage service has no such object")
            if status == 403 or status in RETRY_STATUSES:
                raise _Again(f"HTTP {status}", expired=status == 403)
            if status not in (200, 206) or (status == 200 and (lo, hi) != (0, self.size)):
                raise StorageUnavailable(
                    f"the storage service refused a download: HTTP {status} "
                    f"{response.read(200).decode(errors='replace')}"
                )
            buffer = memoryview(bytearray(CHUNK))
            while n := response.readinto(buffer):
                if offset + n > hi:
                    raise StorageUnavailable("the storage service sent too many bytes")
                os.pwrite(fd, buffer[:n], offset)
                offset += n
                got[0] += n
                on_bytes(n)
            done = offset == hi and response.isclosed()
        finally:
            if not done:  # an error, or a body cut short: never hand that connection out again
                connections.drop(where)
        if offset != hi:
            raise _Again(f"the storage service sent {offset - lo} of {hi - lo} bytes")


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
