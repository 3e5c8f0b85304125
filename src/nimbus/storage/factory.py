"""The one place where a storage URL picks a backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import ParseResult, unquote, urlparse

from nimbus.errors import InvalidInput
from nimbus.storage.azure import AzureObjectStore
from nimbus.storage.base import ObjectStore
from nimbus.storage.local import LocalObjectStore
from nimbus.storage.memory import MemoryObjectStore
from nimbus.storage.s3 import S3ObjectStore

# Where each cloud's standard configuration lives, for the error that refuses a URL with
# credentials or options in it.
_CONFIGURED_BY = {
    "s3": "set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and AWS_ENDPOINT_URL",
    "az": "set AZURE_STORAGE_CONNECTION_STRING (or the account name and key variables)",
    "gs": "use application default credentials (GOOGLE_APPLICATION_CREDENTIALS), "
    "or STORAGE_EMULATOR_HOST for an emulator",
}
_CONTAINER = {"s3": "BUCKET", "az": "CONTAINER", "gs": "BUCKET"}


def _local(url: str) -> ObjectStore:
    return LocalObjectStore(Path(unquote(urlparse(url).path)))


def _memory(url: str) -> ObjectStore:
    return MemoryObjectStore()


def _cloud_url(url: str) -> ParseResult:
    """``SCHEME://CONTAINER/PREFIX``, with nothing else in it."""
    parsed = urlparse(url)
    scheme = parsed.scheme
    if not parsed.hostname:
        raise InvalidInput(
            f"storage URL {url!r} names no {_CONTAINER[scheme].lower()} "
            f"({scheme}://{_CONTAINER[scheme]}/PREFIX)"
        )
    if "@" in parsed.netloc or ":" in parsed.netloc or parsed.query:
        raise InvalidInput(
            f"a {scheme}:// storage URL carries no credentials or options: "
            f"{_CONFIGURED_BY[scheme]} instead"
        )
    return parsed


def _s3(url: str) -> ObjectStore:
    parsed = _cloud_url(url)
    store = S3ObjectStore(str(parsed.hostname), unquote(parsed.path))
    store.probe()
    return store


def _azure(url: str) -> ObjectStore:
    parsed = _cloud_url(url)
    store = AzureObjectStore(str(parsed.hostname), unquote(parsed.path))
    store.probe()
    return store


def _gcs(url: str) -> ObjectStore:
    # Google's client library is imported by the processes that use it only (it takes a
    # good part of a second, and every job process imports nimbus.storage).
    from nimbus.storage.gcs import GCSObjectStore

    parsed = _cloud_url(url)
    store = GCSObjectStore(str(parsed.hostname), unquote(parsed.path))
    store.probe()
    return store


_BACKENDS: dict[str, Callable[[str], ObjectStore]] = {
    "file": _local,
    "memory": _memory,
    "s3": _s3,
    "az": _azure,
    "gs": _gcs,
}


def open_object_store(url: str) -> ObjectStore:
    """Open the object store named by ``url`` (``file:///dir``, ``memory://``,
    ``s3://BUCKET/PREFIX``, ``az://CONTAINER/PREFIX`` or ``gs://BUCKET/PREFIX``); a bucket
    is probed now, so a misconfiguration fails here."""
    scheme = urlparse(url).scheme or "file"
    try:
        factory = _BACKENDS[scheme]
    except KeyError:
        raise InvalidInput(
            f"unsupported storage URL scheme {scheme!r} (supported: {sorted(_BACKENDS)})"
        ) from None
    return factory(url)
