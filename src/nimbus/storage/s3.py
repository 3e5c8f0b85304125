"""Object store in an S3 bucket (AWS or any S3-compatible server), through obstore.

Credentials, region and endpoint come from the standard AWS variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``), never
from the storage URL. Writes are create-only: a conditional put (``If-None-Match: *``) for
small objects; large files go up as a multipart upload of ``part_size`` parts, at most
``concurrency`` in flight, so memory stays bounded whatever the file size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from nimbus.errors import StorageUnavailable
from nimbus.storage.s3_direct import S3Direct

PART_SIZE = 8 * 1024 * 1024
CONCURRENCY = 4
READ_BUFFER = 1024 * 1024
_CREDENTIAL_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden")


class _Reader(io.RawIOBase):
    """A streaming file over obstore's ranged reader: bytes arrive one buffer at a time."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            chunk = self._source.read(len(view))
        except BaseError as exc:
            raise StorageUnavailable(f"object storage failed during a read: {exc}") from exc
        data = memoryview(chunk)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


class S3ObjectStore:
    """Objects under ``prefix`` in ``bucket``; keys are ``/``-separated paths below it."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        config: Mapping[str, str] | None = None,
        part_size: int = PART_SIZE,
        concurrency: int = CONCURRENCY,
        retry_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.concurrency = concurrency
        settings = dict(config or {})
        self._config = settings
        self._direct: dict[str | None, S3Direct] = {}
        endpoint = settings.get("endpoint") or settings.get("aws_endpoint")
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            config=settings or None,  # type: ignore[arg-type]
            client_options={
                # An S3-compatible server on a private network (or loopback) speaks plain
                # HTTP; the endpoint is the operator's own choice, so it decides.
                "allow_http": bool(endpoint and endpoint.startswith("http://"))
                or _env_endpoint_is_http(),
                "connect_timeout": timedelta(seconds=5),
                "timeout": timedelta(seconds=120),
            },
            retry_config={
                "max_retries": 3,
                "retry_timeout": retry_timeout,
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=2),
                    "base": 2,
                },
            },
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _fail(self, exc: BaseError, doing: str) -> StorageUnavailable:
        text = " ".join(str(exc).split())
        # obstore reports most S3 refusals as a generic error carrying the S3 error code.
        if "NoSuchBucket" in text:
            why = f"bucket {self.bucket!r} does not exist"
        elif isinstance(exc, UnauthenticatedError | PermissionDeniedError) or any(
            code in text for code in _CREDENTIAL_CODES
        ):
            why = "the credentials were refused (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        else:
            why = text[:300]
        return StorageUnavailable(f"object storage {self.url} unavailable while {doing}: {why}")

    def direct_transfers(self, public_endpoint: str | None = None) -> S3Direct:
        """Presigned URLs and multipart uploads by id on this bucket (boto3: see
        :mod:`nimbus.storage.s3_direct`), signed for ``public_endpoint`` when given."""
        if public_endpoint not in self._direct:
            self._direct[public_endpoint] = S3Direct(
                self.bucket, self.prefix, config=self._config, public_endpoint=public_endpoint
            )
        return self._direct[public_endpoint]

    def probe(self) -> None:
        """List one page under the prefix: proves the bucket exists, the credentials are
        accepted and the endpoint answers, before anything depends on it."""
        try:
            obstore.list_with_delimiter(self._store, None)
        except NotFoundError:
            raise StorageUnavailable(
                f"object storage {self.url}: bucket {self.bucket!r} does not exist"
            ) from None
        except BaseError as exc:
            raise self._fail(exc, "checking the bucket at start") from None

    def put_file(self, key: str, source: Path) -> None:
        """Upload ``source`` under ``key`` unless ``key`` exists; the source is removed once
        the object is stored. Small files use a conditional put; multipart uploads (files
        over ``part_size``) check first, since S3 completes a multipart upload
        unconditionally on most servers."""
        source = Path(source)
        size = source.stat().st_size
        multipart = size > self.part_size
        try:
            if multipart and self.exists(key):
                source.unlink()
                return
            with open(source, "rb") as f:
                obstore.put(
                    self._store,
                    key,
                    f,
                    mode=None if multipart else "create",
                    use_multipart=multipart,
                    chunk_size=self.part_size,
                    max_concurrency=self.concurrency,
                )
        except AlreadyExistsError:
            pass
        except BaseError as exc:
            raise self._fail(exc, f"writing {key}") from None
        source.unlink()

    def open(self, key: str) -> BinaryIO:
        """A file that streams the object in ``READ_BUFFER`` ranges; raises ``KeyError``."""
        try:
            reader = obstore.open_reader(self._store, key, buffer_size=READ_BUFFER)
        except (NotFoundError, FileNotFoundError):
            raise KeyError(key) from None
        except BaseError as exc:
            raise self._fail(exc, f"reading {key}") from None
        return io.BufferedReader(_Reader(reader), READ_BUFFER)

    def local_path(self, key: str) -> Path | None:
        return None

    def _head(self, key: str) -> Any:
        try:
            return obstore.head(self._store, key)
        except (NotFoundError, FileNotFoundError):
            raise KeyError(key) from None
        except BaseError as exc:
            raise self._fail(exc, f"looking up {key}") from None

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except KeyError:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["size"])

    def etag(self, key: str) -> str:
        """The server's entity tag (a multipart upload's ends in ``-<parts>``)."""
        return str(self._head(key)["e_tag"])

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self._store, key)
        except (NotFoundError, FileNotFoundError):
            pass
        except BaseError as exc:
            raise self._fail(exc, f"deleting {key}") from None

    def keys(self, prefix: str = "") -> Iterator[str]:
        # obstore lists whole path segments; listing from the prefix's directory and
        # filtering by string keeps the protocol's plain startswith meaning.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else None
        found: list[str] = []
        try:
            for page in obstore.list(self._store, prefix=directory):
                found.extend(meta["path"] for meta in page if meta["path"].startswith(prefix))
        except BaseError as exc:
            raise self._fail(exc, "listing") from None
        yield from sorted(found)


def _env_endpoint_is_http() -> bool:
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
    return endpoint.startswith("http://")
