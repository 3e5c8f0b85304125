"""The one place where a storage URL picks a backend."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import ParseResult, unquote, urlparse

from nimbus.errors import InvalidInput, MissingExtra
from nimbus.storage.base import ObjectStore
from nimbus.storage.local import LocalObjectStore
from nimbus.storage.memory import MemoryObjectStore

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


# Each cloud backend's libraries come with an optional dependency group (pyproject's
# extras: s3, azure, gcs; 'all' holds them all), imported by the processes that use them
# only: a plain install serves file:// storage, and every job process imports nimbus.storage.
_EXTRAS = {
    "s3": ("obstore", "boto3"),
    "azure": ("obstore", "azure.storage.blob"),
    "gcs": ("google.cloud.storage",),
}


class CloudStore(ObjectStore, Protocol):
    def probe(self) -> None:
        """Fail now (StorageUnavailable) if the bucket cannot be reached."""


def backend_class(extra: str, module: str, name: str) -> Callable[[str, str], CloudStore]:
    """The store class ``name`` of backend ``module``, whose third-party libraries come with
    the ``extra``; :class:`MissingExtra` naming it when they are not installed."""
    for library in _EXTRAS[extra]:
        try:
            importlib.import_module(library)
        except ModuleNotFoundError as exc:
            raise MissingExtra(f"{extra} object storage", extra, exc.name or library) from None
    found: Callable[[str, str], CloudStore] = getattr(importlib.import_module(module), name)
    return found


def _cloud(extra: str, module: str, name: str) -> Callable[[str], ObjectStore]:
    """The opener of one cloud's URLs: BUCKET (host) and PREFIX (path) to its store class,
    probed before it is handed out (a misconfiguration stops the server at start)."""

    def open_url(url: str) -> ObjectStore:
        parsed = _cloud_url(url)
        store = backend_class(extra, module, name)(str(parsed.hostname), unquote(parsed.path))
        store.probe()
        return store

    return open_url


_BACKENDS: dict[str, Callable[[str], ObjectStore]] = {
    "file": _local,
    "memory": _memory,
    "s3": _cloud("s3", "nimbus.storage.s3", "S3ObjectStore"),
    "az": _cloud("azure", "nimbus.storage.azure", "AzureObjectStore"),
    "gs": _cloud("gcs", "nimbus.storage.gcs", "GCSObjectStore"),
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
