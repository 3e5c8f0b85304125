"""What every obstore-backed object store shares (S3 and Azure Blob): create-only writes,
bounded multipart uploads, ranged streaming reads, listing, and one translation of the
client's errors into :class:`StorageUnavailable`.

A backend subclass builds the obstore store from its cloud's standard configuration and
says how its server words a missing bucket and a refused credential.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
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

from nimbus.errors import StorageUnavailable

PART_SIZE = 8 * 1024 * 1024
CONCURRENCY = 4
READ_BUFFER = 1024 * 1024


def client_options(*, allow_http: bool) -> dict[str, Any]:
    """HTTP settings shared by every backend. A server on a private network (or loopback)
    may speak plain HTTP; the endpoint is the operator's choice, so it decides."""
    return {
        "allow_http": allow_http,
        "connect_timeout": timedelta(seconds=5),
        "timeout": timedelta(seconds=120),
    }


def retry_config(retry_timeout: timedelta) -> dict[str, Any]:
    """A few quick retries, then a clear failure rather than a long hang."""
    return {
        "max_retries": 3,
        "retry_timeout": retry_timeout,
        "backoff": {
            "init_backoff": timedelta(milliseconds=100),
            "max_backoff": timedelta(seconds=2),
            "base": 2,
        },
    }


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


class ObstoreObjectStore:
    """Objects under ``prefix`` in one bucket (or container) of an obstore ``store``."""

    scheme = ""
    container_word = "bucket"
    credential_hint = ""
    #: Server error codes that mean "no such bucket" / "credentials refused".
    missing_codes: tuple[str, ...] = ()
    credential_codes: tuple[str, ...] = ()

    def __init__(
        self,
        store: Any,
        container: str,
        prefix: str,
        *,
        part_size: int = PART_SIZE,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self._store = store
        self.container = container
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.concurrency = concurrency

    @property
    def url(self) -> str:
        base = f"{self.scheme}://{self.container}"
        return f"{base}/{self.prefix}" if self.prefix else base

    def _missing(self) -> str:
        return f"{self.container_word} {self.container!r} does not exist"

    def _fail(self, exc: BaseError, doing: str) -> StorageUnavailable:
        text = " ".join(str(exc).split())
        # obstore reports most refusals as a generic error carrying the server's error code.
        if any(code in text for code in self.missing_codes):
            why = self._missing()
        elif isinstance(exc, UnauthenticatedError | PermissionDeniedError) or any(
            code in text for code in self.credential_codes
        ):
            why = f"the credentials were refused (check {self.credential_hint})"
        else:
            why = text[:300]
        return StorageUnavailable(f"object storage {self.url} unavailable while {doing}: {why}")

    def probe(self) -> None:
        """List one page under the prefix: proves the bucket exists, the credentials are
        accepted and the endpoint answers, before anything depends on it."""
        try:
            obstore.list_with_delimiter(self._store, None)
        except NotFoundError:
            raise StorageUnavailable(f"object storage {self.url}: {self._missing()}") from None
        except BaseError as exc:
            raise self._fail(exc, f"checking the {self.container_word} at start") from None

    def put_file(self, key: str, source: Path) -> None:
        """Upload ``source`` under ``key`` unless ``key`` exists; the source is removed once
        the object is stored. Small files use a conditional put (create-only on the
        server); multipart uploads (files over ``part_size``: at most ``concurrency`` parts
        of ``part_size`` in memory) check first, since obstore completes them
        unconditionally."""
        source = Path(source)
        multipart = source.stat().st_size > self.part_size  # a missing source raises here
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
        except (NotFoundError, FileNotFoundError):
            # obstore raises the builtin for a 404: the bucket went away under us.
            raise StorageUnavailable(
                f"object storage {self.url} unavailable while writing {key}: {self._missing()}"
            ) from None
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
        """The server's entity tag (an S3 multipart upload's ends in ``-<parts>``)."""
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
