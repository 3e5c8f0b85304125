"""Object store in a Google Cloud Storage bucket, through Google's own client library.

Credentials come from application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud auth application-default login``, or the metadata server); ``STORAGE_EMULATOR_HOST``
points the client at an emulator. Never from the storage URL.

Why not obstore here, as for S3 and Azure: obstore writes to GCS through the XML API
(``PUT /bucket/object``, XML multipart uploads), which fake-gcs-server, the emulator the
tests run, answers ``400 invalid uploadType``; Google's client speaks the JSON API, which
both the emulator and GCS implement.

Writes are create-only: an upload with ``ifGenerationMatch=0``, which the server refuses if
the object exists. Files over 8 MiB go up as a resumable upload in 16 MiB chunks, one
chunk in flight at a time, after an absence check (fake-gcs-server ignores the precondition
on resumable uploads; GCS honours it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import requests
from google.api_core import exceptions as api_errors
from google.auth import exceptions as auth_errors
from google.cloud import storage
from google.cloud.storage import exceptions as media_errors
from google.cloud.storage.retry import DEFAULT_RETRY

from nimbus.errors import StorageUnavailable
from nimbus.storage.cloud import READ_BUFFER

if TYPE_CHECKING:
    from nimbus.storage.gcs_direct import GCSDirect

# What the client raises when the server refuses, disappears or answers nonsense.
ERRORS = (
    api_errors.GoogleAPIError,
    auth_errors.GoogleAuthError,
    requests.RequestException,
    media_errors.InvalidResponse,
    media_errors.DataCorruption,
    ConnectionError,
)
TIMEOUT = (5.0, 120.0)  # connect, read
# A resumable upload sends its chunks one after another, so a chunk is bigger than an S3
# part: 16 MiB went 1.4-1.8x faster than 8 MiB to fake-gcs-server (three runs of 128 MiB),
# and the client holds about two chunks (32 MiB, measured) at its peak. 32 MiB chunks were
# not clearly faster again and would hold about 64; the client's default, 100 MiB chunks,
# held 192 MiB uploading a 192 MiB file.
CHUNK_SIZE = 16 * 1024 * 1024
SINGLE_REQUEST = 8 * 1024 * 1024  # larger files go up as resumable uploads (the client's rule)


def _default_signer(client: Any) -> Any:
    """Credentials that can sign URLs (a service-account key), or None: the client's own
    (application default credentials), else with an emulator (whose client goes
    anonymous) the key file ``GOOGLE_APPLICATION_CREDENTIALS`` names. Never a metadata
    server probe: that would stall every start off Google Cloud."""
    import google.auth
    from google.auth.credentials import Signing

    credentials = getattr(client, "_credentials", None)
    if isinstance(credentials, Signing):
        return credentials
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        return None
    try:
        credentials, _ = google.auth.load_credentials_from_file(path)  # type: ignore[no-untyped-call]
    except (auth_errors.GoogleAuthError, OSError, ValueError):
        return None
    return credentials if isinstance(credentials, Signing) else None


class _Reader(io.RawIOBase):
    """Ranged reads of one generation of an object, a buffer at a time."""

    def __init__(self, blob: Any, size: int, fail: Any, retry: Any) -> None:
        self._blob = blob
        self._retry = retry
        self._size = size
        self._pos = 0
        self._fail = fail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self._size or not len(view):
            return 0
        end = min(self._pos + len(view), self._size) - 1
        try:
            data = self._blob.download_as_bytes(
                start=self._pos,
                end=end,
                checksum=None,
                raw_download=True,
                retry=self._retry,
                timeout=TIMEOUT,
            )
        except ERRORS as exc:
            raise self._fail(exc, f"reading {self._blob.name}") from None
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class GCSObjectStore:
    """Objects under ``prefix`` in ``bucket``; keys are ``/``-separated paths below it."""

    scheme = "gs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: storage.Client | None = None,
        signer: Any = None,
        part_size: int = CHUNK_SIZE,
        # Google's retries are bounded by time only: with obstore's backoff (0.1 s, doubling)
        # two seconds give about the retries obstore makes for S3 and Azure (three), then a
        # clear failure rather than a request hanging on a server that is gone.
        retry_timeout: timedelta = timedelta(seconds=2),
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self._retry = DEFAULT_RETRY.with_delay(initial=0.1, maximum=2.0, multiplier=2.0)
        self._retry = self._retry.with_timeout(retry_timeout.total_seconds())
        try:
            self._client = client if client is not None else storage.Client()
        except auth_errors.DefaultCredentialsError as exc:
            raise StorageUnavailable(
                f"object storage {self.url}: no usable Google credentials "
                f"(set GOOGLE_APPLICATION_CREDENTIALS, or STORAGE_EMULATOR_HOST for an "
                f"emulator): {' '.join(str(exc).split())[:200]}"
            ) from None
        self._bucket = self._client.bucket(bucket)
        self._signer = signer if signer is not None else _default_signer(self._client)

    def direct_transfers(self, public_endpoint: str | None = None) -> GCSDirect | None:
        """Signed part PUTs and GETs on this bucket (:mod:`nimbus.storage.gcs_direct`), for
        ``public_endpoint`` when given; None without a service-account key to sign with."""
        from nimbus.storage.gcs_direct import GCSDirect

        if self._signer is None:
            return None
        endpoint = (
            public_endpoint
            or os.environ.get("STORAGE_EMULATOR_HOST")
            or str(getattr(self._client, "api_endpoint", "") or "")
            or "https://storage.googleapis.com"
        )
        return GCSDirect(
            self._bucket,
            self.prefix,
            signer=self._signer,
            endpoint=endpoint,
            retry=self._retry,
            fail=self._fail,
        )

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: BaseException, doing: str) -> StorageUnavailable:
        if isinstance(exc, api_errors.NotFound) and "/o/" not in str(exc):
            why = f"bucket {self.bucket!r} does not exist"
        elif isinstance(
            exc, api_errors.Unauthorized | api_errors.Forbidden | auth_errors.RefreshError
        ):
            why = "the credentials were refused (check GOOGLE_APPLICATION_CREDENTIALS)"
        else:
            why = " ".join(str(exc).split())[:300] or type(exc).__name__
        return StorageUnavailable(f"object storage {self.url} unavailable while {doing}: {why}")

    def probe(self) -> None:
        """List one object under the prefix: proves the bucket exists, the credentials are
        accepted and the endpoint answers, before anything depends on it."""
        try:
            list(
                self._client.list_blobs(
                    self.bucket,
                    prefix=self._name(""),
                    max_results=1,
                    retry=self._retry,
                    timeout=TIMEOUT,
                )
            )
        except ERRORS as exc:
            raise self._fail(exc, "checking the bucket at start") from None

    def put_file(self, key: str, source: Path) -> None:
        """Upload ``source`` under ``key`` unless ``key`` exists; the source is removed once
        the object is stored. Large files are checked for first, as S3 and Azure multipart
        uploads are: not every server honours the precondition on a resumable upload."""
        source = Path(source)
        large = source.stat().st_size > SINGLE_REQUEST  # a missing source raises here
        try:
            if not (large and self.exists(key)):
                self.upload(key, source)
        except ERRORS as exc:
            raise self._fail(exc, f"writing {key}") from None
        source.unlink()

    def upload(self, key: str, source: Path) -> bool:
        """Upload with ``ifGenerationMatch=0``: the server refuses it if ``key`` exists.
        Returns False when refused. Over ``SINGLE_REQUEST`` bytes, a resumable upload of
        ``part_size`` chunks."""
        blob = self._bucket.blob(self._name(key), chunk_size=self.part_size)
        try:
            blob.upload_from_filename(
                str(source), if_generation_match=0, retry=self._retry, timeout=TIMEOUT
            )
        except api_errors.PreconditionFailed:
            return False  # created meanwhile by another writer: same key, same bytes
        return True

    def _get(self, key: str) -> Any:
        try:
            blob = self._bucket.get_blob(self._name(key), retry=self._retry, timeout=TIMEOUT)
        except ERRORS as exc:
            raise self._fail(exc, f"looking up {key}") from None
        if blob is None:
            raise KeyError(key)
        return blob

    def open(self, key: str) -> BinaryIO:
        """A file that streams the object in ``READ_BUFFER`` ranges; raises ``KeyError``."""
        found = self._get(key)
        # Pinned to the generation looked up: a replaced object cannot splice into a read.
        blob = self._bucket.blob(self._name(key), generation=found.generation)
        reader = _Reader(blob, int(found.size), self._fail, self._retry)
        return io.BufferedReader(reader, READ_BUFFER)

    def local_path(self, key: str) -> Path | None:
        return None

    def exists(self, key: str) -> bool:
        try:
            self._get(key)
        except KeyError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._get(key).size)

    def delete(self, key: str) -> None:
        try:
            self._bucket.delete_blob(self._name(key), retry=self._retry, timeout=TIMEOUT)
        except api_errors.NotFound:
            pass
        except ERRORS as exc:
            raise self._fail(exc, f"deleting {key}") from None

    def keys(self, prefix: str = "") -> Iterator[str]:
        root = self._name("")
        try:
            names = [
                blob.name[len(root) :]
                for blob in self._client.list_blobs(
                    self.bucket, prefix=root + prefix, retry=self._retry, timeout=TIMEOUT
                )
            ]
        except ERRORS as exc:
            raise self._fail(exc, "listing") from None
        yield from sorted(names)
