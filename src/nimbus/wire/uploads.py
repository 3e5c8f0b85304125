"""Direct uploads and downloads: ``/datasets/{name}/uploads``, ``/uploads/{id}`` and
``…/files/{file}/link`` (docs/api.md, "Direct transfers")."""

from __future__ import annotations

from pydantic import Field

from nimbus.datasets.domain import Format, Task
from nimbus.names import MAX_INT64
from nimbus.wire.base import Request, Response, Timestamp

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class CreateUpload(Request):
    """A direct upload of one file as a new version of a dataset: its name and size, and
    the same ingest options as the streamed upload's query parameters."""

    filename: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=1, le=MAX_INT64)
    task: Task | None = None
    format: Format | None = None
    label: str | None = Field(default=None, max_length=256)
    seed: int = Field(default=0, ge=0, le=MAX_INT64)
    image_size: str | None = Field(default=None, max_length=32)
    image_fit: str | None = Field(default=None, max_length=16)
    group_column: str | None = Field(default=None, min_length=1, max_length=256)
    # The file's SHA-256, hashed before the upload: the parts then go straight to the
    # content-addressed key (no copy in the bucket afterwards). Checked, never trusted.
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)


class UploadedPart(Response):
    """A part the bucket holds: its number (from 1), size and entity tag (the MD5 of its
    bytes, quoted, on S3), by which a resuming client checks it against its own file."""

    number: int
    size: int
    etag: str


class UploadSession(Response):
    """An upload in progress. The file goes up as ``parts`` parts of ``part_size`` bytes
    (the last one shorter), each PUT to a URL from ``POST /uploads/{id}/parts``."""

    id: str
    dataset: str
    filename: str
    size: int
    part_size: int
    parts: int
    created_at: Timestamp
    uploaded: list[UploadedPart] = []


class PartUrlsRequest(Request):
    """Which parts to sign URLs for (1-based part numbers, at most 1000 per request)."""

    numbers: list[int] = Field(min_length=1, max_length=1000)


class PartUrls(Response):
    """Presigned PUT URLs by part number, valid until ``expires_at``; each lets its holder
    upload that one part of that one upload, and nothing else."""

    urls: dict[int, str]
    expires_at: Timestamp


class CompleteUpload(Request):
    """The file's SHA-256 as the client computed it: checked against what the bucket holds,
    never taken on trust."""

    sha256: str = Field(pattern=SHA256_PATTERN)


class FileLink(Response):
    """Where to GET a stored file straight from the storage service: ``url`` (presigned,
    valid until ``expires_at``), or None when the store has no direct transfers (use the
    ``…/files/{file}`` route). The client checks the bytes against ``sha256``."""

    url: str | None
    size: int
    sha256: str
    name: str
    expires_at: Timestamp | None = None
