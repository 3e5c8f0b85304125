"""A control plane's read-back of an object into a local file, hashed in order from memory
as the ranges land and written past the page cache (:func:`nimbus.ranges.fetch_write_hash`).

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
from nimbus.ranges import fetch_write_hash, open_unbuffered
from nimbus.storage.direct import ObjectChanged

# A read-back holds each range in memory until it is hashed, in order, and writes the
# staging file past the page cache (nimbus.ranges.fetch_write_hash): SLOTS ranges of RANGE
# bytes, 18 MiB in all. On this VM writing a GiB through the page cache cost 0.2-17 s of
# kernel time depending on which pages it got (fresh ones fault in from the host; boto3's
# download_file paid the same); read back this way, 1.4-2.1 s every time (docs/storage.md,
# "Read-backs past the page cache"). Azurite pays per request: 1 GiB in 4 MiB ranges
# 4.6-7.3 s, in 8 MiB 2.2-4.2 s (SeaweedFS 1.8-2.1 s either way); 6 slots of 8 MiB put the
# control plane's peak RSS at 222-227 MB (the target is 200), 5 of 4 MiB at 194-197 MB,
# 3 of 8 MiB at 197-201 MB. 3 of 6 MiB, 4 rounds rotated against 3 of 8: SeaweedFS
# 1.65-1.69 s (8 MiB 1.55-2.11), Azurite 2.59-3.23 s (1.96-3.17); 2 of 8 MiB with 2 GETs
# in flight was slower on both (1.59-2.44, 2.93-3.56).
RANGE = 6 * 1024 * 1024  # one ranged GET of a read-back
WORKERS = 3  # ranged GETs in flight
SLOTS = 3  # ranges held at once: those in flight and those that landed before an earlier one
LINK_SECONDS = 15 * 60  # a read-back's link (renewed if it expires mid-way)
# GCS's read-back fetches through its SDK, which holds each range whole and copies it: the
# same ring, so 18 MiB of buffers and the SDK's copies (8 ranges in flight: the control
# plane's peak RSS ~20 MB higher, the read-back no faster on the emulators).

FetchRange = Callable[[int, int], Iterable[bytes]]
"""``fetch(lo, hi)``: the bytes ``lo`` to ``hi`` (exclusive) of the object, in pieces."""


def read_into(
    fetch: FetchRange,
    size: int,
    target: Path,
    *,
    what: str,
) -> str:
    """Write ``size`` bytes fetched by ``fetch`` (:data:`RANGE` at a time, :data:`WORKERS`
    in flight, :data:`SLOTS` held) to ``target`` past the page cache and return their SHA-256.
    ``what`` names the object in errors; a range that comes back short or long is
    :class:`StorageUnavailable`."""

    def fill(lo: int, hi: int, into: memoryview) -> None:
        offset = 0
        for piece in fetch(lo, hi):
            if offset + len(piece) > len(into):
                raise StorageUnavailable(f"reading {what}: the storage service sent a bad range")
            into[offset : offset + len(piece)] = piece
            offset += len(piece)
        if offset != len(into):
            raise StorageUnavailable(f"reading {what}: the storage service sent a short range")

    fd, unbuffered = open_unbuffered(target, 0o600)
    try:
        return fetch_write_hash(
            fd,
            size,
            fill,
            range_size=RANGE,
            workers=WORKERS,
            slots=SLOTS,
            unbuffered=unbuffered,
        )
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
    it expires), each ``If-Match: tag``, read into memory; their SHA-256. Raises
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
        slots=SLOTS,
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
