"""A control plane's read-back of an object into a local file, hashed as the ranges land
(:func:`nimbus.ranges.fill_and_hash`).

Backend-neutral: each cloud's direct transfers (S3, Azure, GCS) pass a function that fetches
one byte range of one version of the object (its reads conditioned on that version, so a
replaced object cannot splice into the read).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from nimbus.errors import StorageUnavailable
from nimbus.ranges import fill_and_hash

RANGE = 8 * 1024 * 1024  # one ranged GET of a read-back (S3: its body streamed)
WORKERS = 8  # ranged GETs in flight (what boto3's download_file uses)
# Where the SDK holds each range whole and copies it (GCS's): 4 MiB ranges, 4 in
# flight, so 16 MiB of buffers and their copies in the control plane (8 in flight: its peak
# RSS ~20 MB higher, the read-back no faster on the emulators).
WHOLE_RANGE = 4 * 1024 * 1024
WHOLE_WORKERS = 4

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

    def fill(fd: int, lo: int, hi: int) -> None:
        offset = lo
        for piece in fetch(lo, hi):
            if offset + len(piece) > hi:
                raise StorageUnavailable(f"reading {what}: the storage service sent a bad range")
            os.pwrite(fd, piece, offset)
            offset += len(piece)
        if offset != hi:
            raise StorageUnavailable(f"reading {what}: the storage service sent a short range")

    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        return fill_and_hash(fd, size, fill, range_size=range_size, workers=workers)
    finally:
        os.close(fd)
