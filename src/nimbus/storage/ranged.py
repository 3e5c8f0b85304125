"""A control plane's read-back of an object: ranged reads in parallel, written in place in a
local file while a thread hashes the ranges in order as they land, so the SHA-256 is ready
when the last byte is and memory stays bounded (a chunk per worker) whatever the size.

Backend-neutral: each cloud's direct transfers (Azure, GCS) pass a function that fetches one
byte range of one version of the object (its reads conditioned on that version, so a
replaced object cannot splice into the read).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

from nimbus.errors import StorageUnavailable

RANGE = 8 * 1024 * 1024  # one ranged GET of a read-back
WORKERS = 8  # ranged GETs in flight
CHUNK = 1024 * 1024

FetchRange = Callable[[int, int], Iterable[bytes]]
"""``fetch(lo, hi)``: the bytes ``lo`` to ``hi`` (exclusive) of the object, in pieces."""


def read_into(
    fetch: FetchRange,
    size: int,
    target: Path,
    *,
    what: str,
    range_size: int = RANGE,
    workers: int = WORKERS,
) -> str:
    """Write ``size`` bytes fetched by ``fetch`` (``range_size`` at a time, ``workers`` in
    flight) to ``target`` and return their SHA-256. ``what`` names the object in errors; a
    range that comes back short or long is :class:`StorageUnavailable`."""
    ranges = [(lo, min(size, lo + range_size)) for lo in range(0, size, range_size)]
    landed = [threading.Event() for _ in ranges]
    failed = threading.Event()
    digest = hashlib.sha256()

    def fetch_one(fd: int, index: int) -> None:
        lo, hi = ranges[index]
        offset = lo
        for piece in fetch(lo, hi):
            if offset + len(piece) > hi:
                raise StorageUnavailable(f"reading {what}: the storage service sent a bad range")
            os.pwrite(fd, piece, offset)
            offset += len(piece)
        if offset != hi:
            raise StorageUnavailable(f"reading {what}: the storage service sent a short range")
        landed[index].set()

    def hash_in_order(fd: int) -> None:
        for (lo, hi), arrived in zip(ranges, landed, strict=True):
            while not arrived.wait(0.1):
                if failed.is_set():
                    return
            offset = lo
            while offset < hi:
                chunk = os.pread(fd, min(CHUNK * 8, hi - offset), offset)
                digest.update(chunk)
                offset += len(chunk)

    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        hasher = threading.Thread(target=hash_in_order, args=(fd,), daemon=True)
        hasher.start()
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="readback") as pool:
                futures = [pool.submit(fetch_one, fd, i) for i in range(len(ranges))]
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
    finally:
        os.close(fd)
    return digest.hexdigest()
