"""Ranged GETs of one URL (a presigned or shared-access link to an object), written in place
in a local file and hashed as they land (:func:`nimbus.ranges.fill_and_hash`).

Used wherever Nimbus reads a large object over plain HTTP: the SDK's direct downloads, and
the control plane's read-back of an object a client uploaded straight into the bucket (on
Azure, where the SDK holds each range whole and copies it, this streams 256 KiB at a time).
A read may be conditioned on the object's version (``If-Match``): a replaced object answers
412 and the read stops with :class:`Changed`, never splicing two versions.
"""

from __future__ import annotations

import contextlib
import http.client
import mmap
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from nimbus.errors import NotFound, StorageUnavailable
from nimbus.ranges import WRITE_SIZE, fetch_write_hash, fill_and_hash, open_unbuffered

PART_TRIES = 4  # tries of one range (or one uploaded part) in all
RANGE_SIZE = 8 * 1024 * 1024  # one ranged GET of a download: an upload part (measured best)
CHUNK = WRITE_SIZE  # read into a buffer of this size, written whole (nimbus.ranges)
CONNECT_TIMEOUT = 10.0  # seconds
READ_TIMEOUT = 120.0  # seconds without a byte
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})  # worth another try


class Changed(Exception):
    """The object is no longer the version the read was conditioned on (HTTP 412)."""


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
    was not read to its end, is closed and never handed out again.

    Each thread also reads into a buffer of its own (:meth:`buffer`), mapped apart from
    malloc and kept for the whole download: a 1 MiB bytearray per range, freed after it,
    raised glibc's mmap threshold and left each thread's arena holding freed megabytes (the
    control plane's peak RSS during a read-back); a fresh mapping per range instead faulted
    in a new MiB each time (on this VM, many times slower)."""

    def __init__(self, cafile: str | None = None) -> None:
        self._cafile = cafile
        self._context: ssl.SSLContext | None = None  # built once, at the first HTTPS origin
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._buffers: list[tuple[mmap.mmap, memoryview]] = []
        self._lock = threading.Lock()

    def buffer(self) -> memoryview:
        """This thread's read buffer (:data:`CHUNK` bytes), until :meth:`close`."""
        view: memoryview | None = getattr(self._local, "buffer", None)
        if view is None:
            mapped = mmap.mmap(-1, CHUNK)
            view = self._local.buffer = memoryview(mapped)
            with self._lock:
                self._buffers.append((mapped, view))
        return view

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
                    url.hostname or "", port, timeout=CONNECT_TIMEOUT, context=self._tls()
                )
            else:
                conn = http.client.HTTPConnection(url.hostname or "", port, timeout=CONNECT_TIMEOUT)
            held[origin] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _tls(self) -> ssl.SSLContext:
        """One context for every connection of the download: certificates checked against
        the ``cafile`` (a PEM bundle) when given, else the machine's trust store (which
        ``SSL_CERT_FILE`` may name). Building one parses the whole bundle, so not per
        connection."""
        with self._lock:
            if self._context is None:
                self._context = ssl.create_default_context(cafile=self._cafile)
            return self._context

    def drop(self, url: SplitResult) -> None:
        conn = self._held().pop((url.scheme, url.netloc), None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            for mapped, view in self._buffers:
                # A traceback may still hold a view of it (http.client's frame): then the
                # mapping goes when that does.
                with contextlib.suppress(BufferError):
                    view.release()
                    mapped.close()
            self._buffers.clear()


class RangedDownload:
    """A presigned GET fetched as byte ranges, ``workers`` at a time, written in place in
    ``part`` and hashed as they land (:func:`nimbus.ranges.fill_and_hash`). A range whose
    connection fails, is cut short, or is answered 408/429/5xx is fetched again (with a
    fresh URL after a 403: the URL expired), :data:`PART_TRIES` times in all. ``headers``
    go with every GET (``If-Match``: a 412 raises :class:`Changed`); ``mode`` is the
    file's if the download creates it; ``cafile`` the certificates an HTTPS service's is
    checked against (default: the machine's).

    ``slots``: 0 writes the file through the page cache and hashes it there (the SDK's
    downloads: the user reads the file next); more reads each range into one of that many
    buffers, hashes it from memory and writes the file past the page cache
    (:func:`nimbus.ranges.fetch_write_hash`: a control plane's read-back, of which only
    what ingest reads is ever read again)."""

    def __init__(
        self,
        link: Link,
        part: Path,
        size: int,
        workers: int,
        *,
        range_size: int = RANGE_SIZE,
        sleep: Callable[[float], None] = time.sleep,
        headers: Mapping[str, str] | None = None,
        mode: int = 0o644,
        cafile: str | None = None,
        slots: int = 0,
    ) -> None:
        self.link, self.part, self.size, self.workers = link, part, size, workers
        self.range_size, self.sleep, self.slots = range_size, sleep, slots
        self.headers, self.mode, self.cafile = dict(headers or {}), mode, cafile
        # One write at a time, as boto3's single writer thread: when the pages written
        # are slow to fault in (this VM, at times 15 s per GiB), 8 threads writing one file
        # at once spun in the kernel (22-25 s of CPU per GiB against 16-17 s serialised,
        # the wall time the same); when they are not, it costs nothing measurable.
        self._writing = threading.Lock()

    def run(self, on_bytes: Callable[[int], None]) -> str:
        """Fetch the whole into ``part``; its SHA-256."""
        connections = Connections(self.cafile)
        if self.slots:
            fd, unbuffered = open_unbuffered(self.part, self.mode)
        else:
            fd = os.open(self.part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, self.mode)

        def fill(fd: int, lo: int, hi: int) -> None:
            self._get(connections, fd, (lo, hi), on_bytes)

        def fetch(lo: int, hi: int, into: memoryview) -> None:
            self._get(connections, into, (lo, hi), on_bytes)

        try:
            if self.slots:
                return fetch_write_hash(
                    fd,
                    self.size,
                    fetch,
                    range_size=self.range_size,
                    workers=self.workers,
                    slots=self.slots,
                    unbuffered=unbuffered,
                )
            return fill_and_hash(
                fd, self.size, fill, range_size=self.range_size, workers=self.workers
            )
        finally:
            os.close(fd)
            connections.close()

    def _get(
        self,
        connections: Connections,
        sink: int | memoryview,
        bounds: tuple[int, int],
        on_bytes: Callable[[int], None],
    ) -> None:
        url = self.link.url
        for attempt in range(1, PART_TRIES + 1):
            got = [0]  # bytes of this attempt reported so far
            try:
                self._read(connections, url, sink, bounds, got, on_bytes)
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
        sink: int | memoryview,
        bounds: tuple[int, int],
        got: list[int],
        on_bytes: Callable[[int], None],
    ) -> None:
        """One GET of bytes ``lo..hi`` into ``sink``: written at their offsets of a file
        descriptor, or read straight into a buffer of ``hi - lo`` bytes (counted in ``got``
        and reported to ``on_bytes`` as they land)."""
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
            conn.request("GET", target, headers={**self.headers, "Range": f"bytes={lo}-{hi - 1}"})
            response = conn.getresponse()
            status = response.status
            if status == 412:
                raise Changed("the object changed while it was read")
            if status == 404:
                raise NotFound("the storage service has no such object")
            if status == 403 or status in RETRY_STATUSES:
                raise _Again(f"HTTP {status}", expired=status == 403)
            if status not in (200, 206) or (status == 200 and (lo, hi) != (0, self.size)):
                raise StorageUnavailable(
                    f"the storage service refused a download: HTTP {status} "
                    f"{response.read(200).decode(errors='replace')}"
                )
            if isinstance(sink, memoryview):
                while offset < hi and (n := response.readinto(sink[offset - lo :])):
                    offset += n
                    got[0] += n
                    on_bytes(n)
                if offset == hi and response.read(1):
                    raise StorageUnavailable("the storage service sent too many bytes")
            else:
                buffer = connections.buffer()
                while n := response.readinto(buffer):
                    if offset + n > hi:
                        raise StorageUnavailable("the storage service sent too many bytes")
                    with self._writing:
                        os.pwrite(sink, buffer[:n], offset)
                    offset += n
                    got[0] += n
                    on_bytes(n)
            done = offset == hi and response.isclosed()
        finally:
            if not done:  # an error, or a body cut short: never hand that connection out again
                connections.drop(where)
        if offset != hi:
            raise _Again(f"the storage service sent {offset - lo} of {hi - lo} bytes")
