"""A control plane's read-back of an object into a local file, hashed as the ranges land
(:func:`nimbus.ranges.fill_and_hash`).

Backend-neutral, two ways: :func:`read_back` fetches through a link the backend signs for
the control plane (S3, Azure: plain HTTP ranged GETs, :mod:`nimbus.ranged_get`);
:func:`read_into` through a function the backend passes that fetches one byte range with
its SDK (GCS). Either way every read is conditioned on one version of the object, so a
replaced object cannot splice into the read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from nimbus.errors import NotFound, StorageUnavailable
from nimbus.ranged_get import Changed, Link, RangedDownload
from nimbus.ranges import fill_and_hash, pwrite_all
from nimbus.storage.direct import ObjectChanged

RANGE = 8 * 1024 * 1024  # one ranged GET of a read-back
WORKERS = 8  # ranged GETs in flight (what boto3's download_file uses)
LINK_SECONDS = 15 * 60  # a read-back's link (renewed if it expires mid-way)
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
            pwrite_all(fd, piece, offset)  # an SDK's piece may be MiBs
            offset += len(piece)
        if offset != hi:
            raise StorageUnavailable(f"reading {what}: the storage service sent a short range")

    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        return fill_and_hash(fd, size, fill, range_size=range_size, workers=workers)
    finally:
        os.close(fd)


def read_back(
    key: str,
    target: Path,
    tag: str,
    size: int,
    sign: Callable[[], str],
    *,
    cafile: str | None = None,
) -> str:
    """Write the ``size`` bytes of version ``tag`` of object ``key`` to ``target`` through
    ranged GETs of the link ``sign()`` returns (valid :data:`LINK_SECONDS`; signed again if
    it expires), each ``If-Match: tag``, streamed 256 KiB at a time; their SHA-256. Raises
    :class:`ObjectChanged` when the object is no longer that version, ``KeyError`` when it
    is gone. ``cafile``: the certificates the service's is checked against, as its SDK's
    (None: the machine's trust store)."""
    link = Link(sign(), sign)
    download = RangedDownload(
        link,
        target,
        size,
        WORKERS,
        range_size=RANGE,
        headers={"If-Match": tag},
        mode=0o600,
        cafile=cafile,
    )
    try:
        return download.run(lambda _: None)
    except Changed:
        raise ObjectChanged(key) from None
    except NotFound:
        raise KeyError(key) from None
