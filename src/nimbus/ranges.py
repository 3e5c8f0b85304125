"""A file filled as byte ranges in parallel and hashed in order as they land: the SHA-256 is
ready when the last byte is, and memory stays bounded (what each range's fetch holds)
whatever the size. The SDK's direct downloads and the control plane's read-backs of cloud
objects both fetch this way; each says how one range is fetched (and retried).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

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
