"""A file filled as byte ranges in parallel and hashed in order as they land: the SHA-256 is
ready when the last byte is, and memory stays bounded (what each range's fetch holds)
whatever the size. The SDK's direct downloads fetch this way (:func:`fill_and_hash`: the
file written through the page cache and hashed there, since the user reads it next); the
control plane's read-backs of cloud objects hold the ranges in a ring of buffers, hash
them from memory and write the file past the page cache (:func:`fetch_write_hash`). Each
caller says how one range is fetched (and retried).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import NoReturn

HASH_CHUNK = 8 * 1024 * 1024  # read back from the page cache this much at a time
# The most one write(2) puts into a file. Linux 6.x (ext4 with large folios) gives a
# buffered write page-cache folios as large as the write: a 1 MiB write takes order-8
# folios, which the allocator mostly cuts from free blocks of order 9 and up, the blocks a
# virtual machine's free page reporting hands back to its host (this VM's reporting order
# is 9), so every byte written faulted in from the host. A 1 GiB read-back written 1 MiB at
# a time took 6-17 s here, nearly all of it kernel time in that copy; 256 KiB at a time
# 1.2-1.3 s, as fast as 512 KiB and faster than boto3's download_file (1.3-1.5 s), which
# writes 256 KiB at a time (docs/storage.md, "Write sizes").
WRITE_SIZE = 256 * 1024


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd``, at most :data:`WRITE_SIZE` per call."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + WRITE_SIZE], offset + done)


FillRange = Callable[[int, int, int], None]
"""``fill(fd, lo, hi)``: write bytes ``lo`` to ``hi`` (exclusive) at their offsets in ``fd``;
return once all are written, raise otherwise (a retry rewrites from ``lo``)."""


def fill_and_hash(fd: int, size: int, fill: FillRange, *, range_size: int, workers: int) -> str:
    """Size ``fd`` to ``size``, fill it by ranges of ``range_size`` bytes (``workers`` at a
    time; one range on the calling thread) and return the SHA-256 of the whole. The first
    failure of any range is raised once the ranges in flight end (the rest never start)."""
    os.ftruncate(fd, size)
    ranges = [(lo, min(size, lo + range_size)) for lo in range(0, size, range_size)]
    if len(ranges) <= 1:
        for lo, hi in ranges:
            fill(fd, lo, hi)
        return _hash(fd, ranges, None, None).hexdigest()
    landed = [threading.Event() for _ in ranges]
    failed = threading.Event()
    digest = hashlib.sha256()

    def fill_one(index: int) -> None:
        fill(fd, *ranges[index])
        landed[index].set()

    hasher = threading.Thread(
        target=_hash, args=(fd, ranges, landed, failed, digest), name="range-hash", daemon=True
    )
    hasher.start()
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="range") as pool:
            futures = [pool.submit(fill_one, i) for i in range(len(ranges))]
            finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                future.cancel()
            for future in finished:
                future.result()
    except BaseException:
        failed.set()
        raise
    finally:
        hasher.join()
    return digest.hexdigest()


def _hash(
    fd: int,
    ranges: list[tuple[int, int]],
    landed: list[threading.Event] | None,
    failed: threading.Event | None,
    digest: hashlib._Hash | None = None,
) -> hashlib._Hash:
    """Hash ``ranges`` of ``fd`` in order, each once it has ``landed`` (None: all have);
    give up when ``failed`` is set."""
    digest = digest if digest is not None else hashlib.sha256()
    # One buffer, mapped apart from malloc and read into again and again. A new 8 MiB bytes
    # per read, freed at once, raised glibc's mmap threshold to 8 MiB for the life of the
    # process, after which every thread's arena kept freed chunks up to twice that (the
    # control plane's peak RSS grew by tens of MB).
    with mmap.mmap(-1, HASH_CHUNK) as mapped:
        buffer = memoryview(mapped)
        try:
            for index, (lo, hi) in enumerate(ranges):
                if landed is not None:
                    while not landed[index].wait(0.1):
                        if failed is not None and failed.is_set():
                            return digest
                offset = lo
                while offset < hi:
                    n = os.preadv(fd, [buffer[: min(HASH_CHUNK, hi - offset)]], offset)
                    if n == 0:
                        raise OSError(f"the file ended at byte {offset} of {hi}")
                    digest.update(buffer[:n])
                    offset += n
        finally:
            buffer.release()
    return digest


# Unbuffered (O_DIRECT) writes go to the disk in whole blocks of the device's: offsets,
# lengths and the buffer's address a multiple of this (4 KiB covers 512-byte and 4 KiB
# sectors; the buffers here are mmap'd, so page-aligned).
ALIGN = 4096


def open_unbuffered(path: Path, mode: int) -> tuple[int, bool]:
    """Create (truncate) ``path`` for writing past the page cache (``O_DIRECT``) where the
    file system allows it; returns the descriptor and whether it is unbuffered. A file
    system without direct I/O (tmpfs) gives an ordinary descriptor."""
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode), False


FetchInto = Callable[[int, int, memoryview], None]
"""``fetch(lo, hi, into)``: fill ``into`` (``hi - lo`` bytes) with bytes ``lo`` to ``hi``;
return once all are there, raise otherwise (a retry refills it from the start)."""


class _Slots:
    """The ranges' buffers, in order: range ``i`` fills buffer ``i % count`` once range
    ``i - count`` is hashed, so the earliest range not hashed always has its buffer and
    nothing waits in a circle."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self._maps = [mmap.mmap(-1, size) for _ in range(count)]
        self.views = [memoryview(m) for m in self._maps]
        self.hashed = 0  # ranges hashed, in order
        self.landed: set[int] = set()
        self.error: BaseException | None = None
        self.stopped = False
        self.changed = threading.Condition()

    def close(self) -> None:
        for view, mapped in zip(self.views, self._maps, strict=True):
            # A traceback may still hold a slice of one (a failed fetch's frame): then that
            # mapping goes when the traceback does.
            with contextlib.suppress(BufferError):
                view.release()
                mapped.close()


def fetch_write_hash(
    fd: int,
    size: int,
    fetch: FetchInto,
    *,
    range_size: int,
    workers: int,
    slots: int,
    unbuffered: bool,
) -> str:
    """Fetch ``size`` bytes by ranges of ``range_size`` (``workers`` at a time) into
    ``slots`` buffers of that size, write each range at its offset of ``fd`` and hash them
    in order from memory; the SHA-256 of the whole. The file is never read back, so with
    ``unbuffered`` (``fd`` from :func:`open_unbuffered`) its bytes never enter the page
    cache: each write is a whole number of :data:`ALIGN` blocks (the last padded, the file
    cut to ``size`` at the end). Memory: ``slots * range_size``, whatever the size. The
    first failure of a range is raised once the ranges in flight end (the rest never
    start)."""
    if range_size % ALIGN or slots < 1:
        raise ValueError("range_size must be a multiple of ALIGN, slots at least 1")
    os.ftruncate(fd, size)
    ranges = [(lo, min(size, lo + range_size)) for lo in range(0, size, range_size)]
    state = _Slots(min(slots, max(1, len(ranges))), range_size)
    write = _direct_write if unbuffered else pwrite_all

    def one(index: int) -> None:
        lo, hi = ranges[index]
        with state.changed:
            while state.hashed <= index - state.count and not state.stopped:
                state.changed.wait()
            if state.stopped:
                return
        view = state.views[index % state.count]
        try:
            fetch(lo, hi, view[: hi - lo])
            write(fd, view[: _padded(hi - lo) if unbuffered else hi - lo], lo)
        except BaseException as exc:  # handed to the hashing thread, which raises it
            with state.changed:
                if not state.stopped:  # the first failure; later ones go with their ranges
                    state.error = exc
                state.stopped = True
                state.changed.notify_all()
            return
        with state.changed:
            state.landed.add(index)
            state.changed.notify_all()

    digest = hashlib.sha256()
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="range") as pool:
            try:
                for index in range(len(ranges)):
                    pool.submit(one, index)
                for index, (lo, hi) in enumerate(ranges):
                    with state.changed:
                        while index not in state.landed and state.error is None:
                            state.changed.wait()
                        if state.error is not None:
                            _raise_taken(state)
                    digest.update(state.views[index % state.count][: hi - lo])
                    with state.changed:
                        state.hashed = index + 1
                        state.changed.notify_all()
            except BaseException:
                with state.changed:
                    state.stopped = True
                    state.changed.notify_all()
                raise
        if unbuffered and size % ALIGN:
            os.ftruncate(fd, size)  # the last write's padding
    finally:
        state.close()
    return digest.hexdigest()


def _raise_taken(state: _Slots) -> NoReturn:
    """Raise the failed range's error, taken out of ``state`` first: its traceback holds
    the frames that hold ``state`` (and the fetch's connection and response), and a cycle
    through it would keep them all until some later garbage collection."""
    error, state.error = state.error, None
    assert error is not None
    try:
        raise error
    finally:
        del error


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _direct_write(fd: int, data: memoryview, offset: int) -> None:
    """All of ``data`` (whole blocks) at ``offset`` of an unbuffered ``fd``. Where the
    device wants larger blocks than :data:`ALIGN` (the write is refused: EINVAL), the file
    goes on through the page cache, as any file would."""
    done = 0
    try:
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~getattr(os, "O_DIRECT", 0))
        pwrite_all(fd, data[done:], offset + done)
