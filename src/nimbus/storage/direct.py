"""Direct transfers: an optional capability of object-storage backends.

A backend that can sign requests lets bytes go straight between a client (or a node) and the
bucket: the control plane hands out short-lived presigned URLs scoped to one key (one part of
one multipart upload, or a GET of one object), then checks what arrived before it records
anything. Backends without it (a local directory, memory) keep the streamed path through the
control plane; :func:`direct_transfers` tells them apart.

Staged uploads live under :data:`UPLOADS_PREFIX` (``uploads/<tenant>/<session>/``), apart
from the content-addressed ``sha256/`` keys: a garbage sweep of blobs never mistakes them
for unreferenced blobs, and a sweep of abandoned uploads finds them there (each session's
``session.json`` carries its creation time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

UPLOADS_PREFIX = "uploads/"
MIN_PART_SIZE = 8 * 1024 * 1024  # S3's floor is 5 MiB for every part but the last
MAX_PARTS = 10_000  # S3's ceiling on the parts of one multipart upload


@dataclass(frozen=True)
class StoredPart:
    """A part the bucket holds for an unfinished multipart upload."""

    number: int
    size: int
    etag: str


class DirectTransfers(Protocol):
    """Presigned access to single keys of one bucket, and multipart uploads by id."""

    #: Whether a client's parts may go to the content-addressed key itself: only where a
    #: part URL allows nothing but that one part (S3). Where a URL lets its holder commit
    #: or overwrite the object (an Azure SAS, a GCS signed URL), parts are staged.
    writes_at_key: bool

    def start_upload(self, key: str) -> str:
        """Begin a multipart upload to ``key``; returns its upload id."""

    def part_url(
        self, key: str, upload_id: str, number: int, length: int, expires_seconds: int
    ) -> str:
        """A URL that lets its holder PUT part ``number`` of that upload, of exactly
        ``length`` bytes (the Content-Length is signed), and nothing else."""

    def parts(self, key: str, upload_id: str) -> list[StoredPart]:
        """The parts uploaded so far (raises ``KeyError`` when the upload is gone)."""

    def complete_upload(
        self, key: str, upload_id: str, parts: list[StoredPart], *, create_only: bool = False
    ) -> str:
        """Join ``parts`` (in order) into the object ``key``; returns its entity tag.
        ``create_only``: only if ``key`` does not exist (a conditional write), else
        ``FileExistsError`` and the upload stays, to be completed again."""

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Drop the upload and its parts; an upload already gone is ignored."""

    def get_url(self, key: str, expires_seconds: int, filename: str | None = None) -> str:
        """A URL that lets its holder GET the object ``key``, and nothing else."""

    def download(self, key: str, target: Path, etag: str | None = None) -> str:
        """Write the object ``key`` to the local file ``target`` (ranged GETs in parallel,
        memory bounded) and return the SHA-256 of what was written; raises ``KeyError``
        when absent, :class:`ObjectChanged` when ``etag`` is given and the object is no
        longer that one (or changes while it is read)."""

    def stat(self, key: str) -> tuple[str, int]:
        """The object's entity tag (the version a conditional request names) and size;
        raises ``KeyError`` when absent."""

    def copy(self, source: str, target: str, etag: str | None = None) -> None:
        """Copy ``source`` to ``target`` inside the bucket (no bytes through this process);
        with ``etag``, only that version of ``source`` (else :class:`ObjectChanged`). A
        backend that can make the copy create-only does, and raises ``FileExistsError``
        when ``target`` exists."""


class ObjectChanged(Exception):
    """The object is not the version a conditional request named (its entity tag)."""


@runtime_checkable
class SignsRequests(Protocol):
    """An object store that offers direct transfers."""

    def direct_transfers(self, public_endpoint: str | None = None) -> DirectTransfers | None:
        """Direct transfers, with URLs signed for ``public_endpoint`` when given (the
        address clients reach the storage service at), else for the store's own; None when
        the store's credentials cannot sign (no account key, no service-account key)."""


def direct_transfers(store: object, public_endpoint: str | None = None) -> DirectTransfers | None:
    """The store's direct transfers, or None when it has none (local, memory)."""
    if isinstance(store, SignsRequests):
        return store.direct_transfers(public_endpoint)
    return None


def part_size_for(size: int, minimum: int = MIN_PART_SIZE) -> int:
    """The part size for an object of ``size`` bytes: ``minimum``, or bigger when that many
    parts would exceed :data:`MAX_PARTS` (rounded up to whole MiB)."""
    needed = math.ceil(size / MAX_PARTS)
    mib = 1024 * 1024
    return max(minimum, math.ceil(needed / mib) * mib)


def part_count(size: int, part_size: int) -> int:
    """How many parts an object of ``size`` bytes has (an empty object: one empty part)."""
    return max(1, math.ceil(size / part_size))


def part_length(size: int, part_size: int, number: int) -> int:
    """The byte length of part ``number`` (1-based)."""
    return min(part_size, size - (number - 1) * part_size)
